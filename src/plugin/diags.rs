//! How the plugin writes diags.log lines.
#![forbid(unsafe_code)]

use crate::abi::Stub;
use crate::ts::log;

/// Collapses a (possibly multi-line) error into one diags.log line.
pub fn one_line(e: &dyn std::fmt::Display) -> String {
    format!("{e:#}").split('\n').map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" | ")
}

/// One WARNING line per function filter `filter`'s module imports that ats-wasm does not
/// provide, naming it and what calling it does. The ABI's gRPC functions (every Rust SDK
/// module imports them) are documented as missing and say so on their first call instead.
pub fn warn_stubs(filter: &str, stubs: &[Stub]) {
    for s in stubs.iter().filter(|s| !s.in_abi) {
        let (import, effect) = (&s.import, &s.effect);
        log::warning(
            format!(
                "ats_wasm: filter \"{filter}\": the module imports {import}, which ats-wasm does not provide; calling it {effect}"
            )
            .as_bytes(),
        );
    }
}
