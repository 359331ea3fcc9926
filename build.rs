//! Generates Rust bindings for the ATS plugin API with bindgen, for the ATS major version whose
//! headers it is pointed at: `ATS_INCLUDE_DIR` (default Debian's `/usr/include`, ATS 9.2), or
//! `ATS_PREFIX` (an ATS install, e.g. `/opt/ats10`: its `include/`), or else `ATS10_PREFIX`
//! (the ATS 10 install the real-ATS tests run against), so `ATS10_PREFIX=/opt/ats10 cargo test`
//! builds for the ATS it tests.
//!
//! - ATS 9: `wrapper.h` (`ts/ts.h`, `ts/remap.h`, `ts/experimental.h`) parsed as C; the API has
//!   C linkage.
//! - ATS 10: `wrapper10.h` (`ts/ts.h`, `ts/remap.h`; `experimental.h` was folded into `ts.h`)
//!   parsed as C++17, because ATS 10.0 declares the `TS*` API without `extern "C"` (only
//!   `TSPluginInit` and `TSRemap*` keep C linkage), so its link names are C++-mangled: bindgen
//!   emits them as `#[link_name]`. What bindgen cannot bind (the inline `DbgCtl` debug-control
//!   class that replaced `TSDebug`/`TSIsDebugTagSet`) goes through `src/ts/shim10.cc`, a thin
//!   `extern "C"` shim compiled here with the `cc` crate. The `ats10` cfg selects the Rust side
//!   of the differences (all in `src/ts/`).

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

/// The `TS_VERSION_MAJOR` that `<include_dir>/ts/apidefs.h` defines.
fn ats_major(include_dir: &Path) -> u32 {
    let apidefs = include_dir.join("ts/apidefs.h");
    println!("cargo:rerun-if-changed={}", apidefs.display());
    let text = fs::read_to_string(&apidefs).unwrap_or_else(|e| panic!("reading {}: {e}", apidefs.display()));
    text.lines()
        .find_map(|l| l.trim().strip_prefix("#define TS_VERSION_MAJOR")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{} defines no TS_VERSION_MAJOR", apidefs.display()))
}

fn main() {
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-changed=wrapper10.h");
    println!("cargo:rerun-if-changed=src/ts/shim10.cc");
    println!("cargo:rerun-if-env-changed=ATS_INCLUDE_DIR");
    println!("cargo:rerun-if-env-changed=ATS_PREFIX");
    println!("cargo:rerun-if-env-changed=ATS10_PREFIX");
    println!("cargo:rustc-check-cfg=cfg(ats10)");
    let set = |name: &str| env::var(name).ok().filter(|v| !v.is_empty());
    let include_dir = match (set("ATS_INCLUDE_DIR"), set("ATS_PREFIX").or_else(|| set("ATS10_PREFIX"))) {
        (Some(dir), _) => PathBuf::from(dir),
        (None, Some(prefix)) => Path::new(&prefix).join("include"),
        (None, None) => PathBuf::from("/usr/include"),
    };
    let ts_h = include_dir.join("ts/ts.h");
    if !ts_h.exists() {
        panic!(
            "{} not found: install Debian's trafficserver-dev (make deps) or set ATS_INCLUDE_DIR / ATS_PREFIX",
            ts_h.display()
        );
    }
    println!("cargo:rerun-if-changed={}", ts_h.display());
    let major = ats_major(&include_dir);

    let mut builder = bindgen::Builder::default().clang_arg(format!("-I{}", include_dir.display()));
    builder = match major {
        9 => builder.header("wrapper.h"),
        10 => {
            println!("cargo:rustc-cfg=ats10");
            cc::Build::new()
                .cpp(true)
                .std("c++17")
                .include(&include_dir)
                .file("src/ts/shim10.cc")
                .warnings(true)
                .compile("ats_wasm_shim10");
            builder
                .header("wrapper10.h")
                .clang_args(["-x", "c++", "-std=c++17"])
                // Returns a std::vector (ATS 10 only, unused): keeps std templates out.
                .blocklist_function("TSContSchedule(Every)?OnEntirePool")
                .opaque_type("std::.*")
        }
        other => panic!("ATS {other} (from {}) is not supported: ats-wasm builds for ATS 9.2 and 10", ts_h.display()),
    };
    let bindings = builder
        .allowlist_function("TS.*")
        // TSmalloc/TSfree are macros over these.
        .allowlist_function("_TS.*")
        .allowlist_type("TS.*")
        .allowlist_var("TS_.*")
        .allowlist_var("TSREMAP_.*")
        .prepend_enum_name(false)
        .default_enum_style(bindgen::EnumVariation::Consts)
        .layout_tests(false)
        .generate_comments(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .generate()
        .expect("bindgen failed on the ATS headers");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("ts_bindings.rs");
    bindings.write_to_file(&out).expect("writing ts_bindings.rs");
}
