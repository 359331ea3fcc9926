//! Generates Rust bindings for the ATS plugin API (`ts/ts.h`, `ts/remap.h`,
//! `ts/experimental.h`) with bindgen. The include directory defaults to Debian's
//! `/usr/include` and can be overridden with `ATS_INCLUDE_DIR`.

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-env-changed=ATS_INCLUDE_DIR");
    let include_dir = env::var("ATS_INCLUDE_DIR").unwrap_or_else(|_| "/usr/include".to_string());
    let ts_h = PathBuf::from(&include_dir).join("ts/ts.h");
    if !ts_h.exists() {
        panic!("{} not found: install Debian's trafficserver-dev (make deps) or set ATS_INCLUDE_DIR", ts_h.display());
    }
    println!("cargo:rerun-if-changed={}", ts_h.display());

    let bindings = bindgen::Builder::default()
        .header("wrapper.h")
        .clang_arg(format!("-I{include_dir}"))
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
        .expect("bindgen failed on wrapper.h");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("ts_bindings.rs");
    bindings.write_to_file(&out).expect("writing ts_bindings.rs");
}
