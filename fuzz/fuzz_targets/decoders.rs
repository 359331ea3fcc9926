//! Feeds arbitrary bytes to the decoders of guest input: the header-map deserializer and the
//! property-path parser. They must never panic; what they accept must round-trip.
//!
//! The decoders are pure: their source files are compiled in directly (`#[path]`), so the
//! fuzz build needs neither wasmtime nor the ATS bindings.

#![no_main]

#[allow(dead_code)]
#[path = "../../src/abi"]
mod abi {
    pub mod properties;
    pub mod serialization;
    pub mod types;
}

use abi::properties::parse_path;
use abi::serialization::{decode_pairs, encode_pairs};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(pairs) = decode_pairs(data) {
        // A map that decodes encodes back to the same bytes (empty maps have three spellings).
        let mut out = Vec::new();
        encode_pairs(pairs.iter().copied(), &mut out);
        if !pairs.is_empty() {
            assert_eq!(out, data);
        }
        assert_eq!(decode_pairs(&out).unwrap(), pairs);
    }
    let mut parts = Vec::new();
    if parse_path(data, &mut parts).is_ok() {
        assert!(!parts.is_empty() && parts.len() <= abi::properties::MAX_PATH_PARTS);
        assert!(parts.iter().all(|p| !p.is_empty()));
    }
});
