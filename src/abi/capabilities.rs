//! `capability_restriction_config.allowed_capabilities`: which host functions a filter may call.
//!
//! As in the upstream plugin (proxy-wasm-cpp-host), a missing or empty list allows everything.
//! Otherwise a host function whose name (`proxy_log`, `fd_write`…, without the import module)
//! is not on the list is not run: a `proxy_*` function answers `INTERNAL_FAILURE` (what
//! cpp-host's stubs answer), a WASI function `ENOSYS`, and `proc_exit` does nothing. The first
//! refused call of each function logs one warning per filter; the host never traps for it.
//! Callbacks are not restricted.

#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

/// The set of allowed host functions of one filter.
#[derive(Debug, Default, Clone)]
pub struct Capabilities {
    allowed: Option<HashSet<String>>,
}

impl Capabilities {
    /// From the configured list; `None` or an empty list allows every function.
    pub fn new(list: Option<&[String]>) -> Self {
        match list {
            Some(l) if !l.is_empty() => Self { allowed: Some(l.iter().cloned().collect()) },
            _ => Self { allowed: None },
        }
    }

    /// Whether host function `name` may run.
    pub fn allows(&self, name: &str) -> bool {
        match &self.allowed {
            None => true,
            Some(set) => set.contains(name),
        }
    }
}

/// Whether this is the first refused call of `function` for the filter (`filter`, `vm_id`)
/// in this process: the caller then logs it.
pub(crate) fn first_denial(filter: &str, vm_id: &str, function: &'static str) -> bool {
    type Seen = Mutex<HashSet<(String, String, &'static str)>>;
    static SEEN: OnceLock<Seen> = OnceLock::new();
    let seen = SEEN.get_or_init(Default::default);
    match seen.lock() {
        Ok(mut s) => s.insert((filter.to_owned(), vm_id.to_owned(), function)),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_or_missing_lists_allow_everything() {
        assert!(Capabilities::new(None).allows("proxy_log"));
        assert!(Capabilities::new(Some(&[])).allows("proxy_log"));
        let c = Capabilities::new(Some(&["proxy_log".to_string()]));
        assert!(c.allows("proxy_log"));
        assert!(!c.allows("proxy_http_call"));
    }

    #[test]
    fn denials_are_reported_once_per_filter_and_function() {
        assert!(first_denial("cap-test", "vm", "proxy_done"));
        assert!(!first_denial("cap-test", "vm", "proxy_done"));
        assert!(first_denial("cap-test", "vm", "proxy_log"));
        assert!(first_denial("cap-test-2", "vm", "proxy_done"));
    }
}
