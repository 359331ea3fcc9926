//! The ATS side: bindgen bindings over `ts/ts.h` ([`sys`]) and thin safe wrappers, split by
//! domain. This is the only module that names ATS symbols; every other layer is testable
//! without ATS.

pub mod control;
pub mod entry;
pub mod fetch;
pub mod headers;
pub mod hooks;
pub mod log;
pub mod net;
pub mod plugin;
pub mod remap;
pub mod stats;
pub mod sys;
pub mod transform;
pub mod txn;
