//! The ATS plugin: `TSPluginInit` → configuration → filters, and transaction hooks →
//! Proxy-Wasm callbacks.
//!
//! Each configured filter has one compiled module and a [`VmPool`] with VMs per net thread.
//! At `READ_REQUEST_HDR` every filter, in `plugin.config` order, gets a stream context in one of
//! its current thread's VMs and runs `proxy_on_request_headers`; at `SEND_RESPONSE_HDR` the
//! filters run `proxy_on_response_headers` in reverse order (as Envoy does); at `TXN_CLOSE`
//! each context ends with `proxy_on_done`, `proxy_on_log`, `proxy_on_delete`.

pub mod backend;
pub mod properties;
mod filter;

use std::sync::OnceLock;

use ats_wasm_pool::{EngineOptions, EpochTicker, VmRef, new_engine};

use crate::abi::Action;
use crate::abi::guest;
use crate::config;
use crate::ts::headers::HeaderMap;
use crate::ts::hooks::{HttpHook, TxnCont, TxnHandler};
use crate::ts::log;
use crate::ts::txn::{Resume, Txn, TxnSlot};
use backend::{Phase, TxnStream};
use filter::Filter;

/// Everything the hooks need, set once by [`init`].
struct Plugin {
    filters: Vec<Filter>,
    slot: TxnSlot<TxnState>,
    cont: TxnCont,
    _ticker: EpochTicker,
}

static PLUGIN: OnceLock<Plugin> = OnceLock::new();

/// One filter's context in one transaction.
struct FilterCtx {
    filter: usize,
    vm: VmRef,
    ctx: u32,
}

/// Per-transaction state: the live contexts, in chain order.
struct TxnState {
    contexts: Vec<FilterCtx>,
}

/// Collapses a (possibly multi-line) error into one diags.log line.
pub(crate) fn one_line(e: &dyn std::fmt::Display) -> String {
    format!("{e:#}").split('\n').map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" | ")
}

/// Plugin entry: registers, parses arguments and filter files, loads modules, installs hooks.
/// Every problem is one `TSError` line; the plugin then runs without the broken part (or, for
/// bad arguments or no usable filter, without hooks) and ATS keeps serving.
pub fn init(args: &[String]) {
    if !crate::ts::plugin::register(c"ats_wasm", c"ats-wasm", c"ats-wasm@users.noreply.invalid") {
        log::error(b"ats_wasm: plugin registration failed; the plugin is disabled");
        return;
    }
    let config_dir = crate::ts::plugin::config_dir();
    let args = match config::parse_args(args, &config_dir) {
        Ok(a) => a,
        Err(e) => {
            log::error(format!("ats_wasm: bad plugin argument: {e}; the plugin is disabled").as_bytes());
            return;
        }
    };

    let opts = EngineOptions { max_memory_bytes: args.max_memory_bytes, ..EngineOptions::default() };
    let engine = match new_engine(&opts) {
        Ok(e) => e,
        Err(e) => {
            log::error(
                format!("ats_wasm: cannot create the wasm engine: {}; the plugin is disabled", one_line(&e)).as_bytes(),
            );
            return;
        }
    };
    let ticker = match EpochTicker::start(&engine, opts.epoch_tick) {
        Ok(t) => t,
        Err(e) => {
            log::error(format!("ats_wasm: cannot start the epoch thread: {e}; the plugin is disabled").as_bytes());
            return;
        }
    };

    let mut filters = Vec::new();
    for path in &args.yaml_files {
        let cfg = match config::load_filter(path, &config_dir, &|k| std::env::var(k).ok()) {
            Ok(c) => c,
            Err(e) => {
                log::error(format!("ats_wasm: {e}; this filter is skipped").as_bytes());
                continue;
            }
        };
        if !cfg.unknown_keys.is_empty() {
            log::warning(
                format!("ats_wasm: {}: unknown keys ignored: {}", path.display(), cfg.unknown_keys.join(", "))
                    .as_bytes(),
            );
        }
        match Filter::load(&engine, cfg, &args, opts.epoch_tick) {
            Ok(f) => {
                log::note(format!("ats_wasm: filter \"{}\" loaded from {}", f.name, path.display()).as_bytes());
                filters.push(f);
            }
            Err(e) => log::error(format!("ats_wasm: {}: {e}; this filter is skipped", path.display()).as_bytes()),
        }
    }
    if filters.is_empty() {
        log::error(b"ats_wasm: no filter could be loaded; the plugin installs no hooks");
        return;
    }
    let Some(slot) = TxnSlot::reserve("ats_wasm", "ats-wasm per-transaction filter contexts") else {
        log::error(b"ats_wasm: no transaction user argument slot is free; the plugin installs no hooks");
        return;
    };
    let cont = TxnCont::new::<Hooks>();
    if PLUGIN.set(Plugin { filters, slot, cont, _ticker: ticker }).is_err() {
        log::error(b"ats_wasm: the plugin was initialized twice; the second configuration is ignored");
        return;
    }
    cont.add_global(HttpHook::ReadRequestHdr);
}

struct Hooks;

impl TxnHandler for Hooks {
    fn on_hook(hook: HttpHook, txn: Txn) -> Resume {
        let Some(p) = PLUGIN.get() else {
            return Resume::Continue;
        };
        match hook {
            HttpHook::ReadRequestHdr => p.request_headers(txn),
            HttpHook::SendResponseHdr => p.response_headers(txn),
            HttpHook::TxnClose => {
                p.close(txn);
                Resume::Continue
            }
        }
    }
}

/// `end_of_stream` for a header block: true when no body follows.
fn no_body(h: &HeaderMap) -> bool {
    let mut v = Vec::new();
    if h.get(b"transfer-encoding", &mut v) {
        return false;
    }
    v.clear();
    !h.get(b"content-length", &mut v) || v.iter().all(|&b| b == b'0' || b == b' ')
}

impl Plugin {
    /// Runs a filter's callback outcome through its failure policy. A trap (or deadline, or
    /// memory cap) poisons the VM; fail-open drops the filter for this transaction, fail-closed
    /// fails the transaction.
    fn failed(&self, f: &Filter, vm: Option<VmRef>, what: &str, err: &dyn std::fmt::Display) -> Resume {
        if let Some(vm) = vm {
            f.pool.poison(vm);
        }
        let policy = if f.fail_open {
            "fail_open: the transaction continues without it"
        } else {
            "fail_closed: the transaction fails"
        };
        log::error(format!("ats_wasm: filter \"{}\": {what} failed: {}; {policy}", f.name, one_line(err)).as_bytes());
        if f.fail_open { Resume::Continue } else { Resume::Error }
    }

    /// Fail-closed in the request phase: the client gets a 503 local response and the origin is
    /// not contacted.
    fn fail_closed_local(txn: Txn, filter: &str) -> Resume {
        let body = format!("503 Service Unavailable: filter \"{filter}\" failed\n");
        txn.set_local_response(503, body.as_bytes(), "text/plain");
        Resume::Continue
    }

    fn request_headers(&self, txn: Txn) -> Resume {
        let (num_headers, eos) = match txn.client_request() {
            Some(h) => (h.len(), no_body(&h)),
            None => (0, true),
        };
        let stream = TxnStream { txn, phase: Phase::Request };
        let mut state = Box::new(TxnState { contexts: Vec::with_capacity(self.filters.len()) });
        let mut resume = Resume::Continue;
        for (i, f) in self.filters.iter().enumerate() {
            let r = f.pool.with_any(|vm_ref, vm| {
                let res = guest::create_stream_context(vm, stream)
                    .and_then(|ctx| Ok((ctx, guest::on_request_headers(vm, ctx, num_headers, eos)?)));
                (vm_ref, res)
            });
            match r {
                Ok((vm, Ok((ctx, action)))) => {
                    state.contexts.push(FilterCtx { filter: i, vm, ctx });
                    if action == Action::Pause {
                        log::debug(
                            format!(
                                "[{}] Pause from proxy_on_request_headers is not supported yet; continuing",
                                f.name
                            )
                            .as_bytes(),
                        );
                    }
                }
                Ok((vm, Err(e))) => resume = self.failed(f, Some(vm), "proxy_on_request_headers", &e),
                Err(e) => resume = self.failed(f, None, "getting a VM", &e),
            }
            if resume == Resume::Error {
                resume = Self::fail_closed_local(txn, &f.name);
                break;
            }
        }
        if !state.contexts.is_empty() {
            self.slot.put(txn, state);
            self.cont.add_to_txn(txn, HttpHook::SendResponseHdr);
            self.cont.add_to_txn(txn, HttpHook::TxnClose);
        }
        resume
    }

    fn response_headers(&self, txn: Txn) -> Resume {
        let Some(mut state) = self.slot.take(txn) else {
            return Resume::Continue;
        };
        let (num_headers, eos) = match txn.client_response() {
            Some(h) => (h.len(), no_body(&h) || matches!(h.status(), 204 | 304)),
            None => (0, true),
        };
        let stream = TxnStream { txn, phase: Phase::Response };
        let mut resume = Resume::Continue;
        // Response filters run in reverse chain order.
        let mut i = state.contexts.len();
        while i > 0 && resume == Resume::Continue {
            i -= 1;
            let fc = &state.contexts[i];
            let f = &self.filters[fc.filter];
            let r = f.pool.with_vm(fc.vm, |vm| {
                guest::attach_stream(vm, fc.ctx, stream);
                guest::on_response_headers(vm, fc.ctx, num_headers, eos)
            });
            match r {
                Ok(Ok(action)) => {
                    if action == Action::Pause {
                        log::debug(
                            format!(
                                "[{}] Pause from proxy_on_response_headers is not supported yet; continuing",
                                f.name
                            )
                            .as_bytes(),
                        );
                    }
                }
                Ok(Err(e)) => {
                    resume = self.failed(f, Some(fc.vm), "proxy_on_response_headers", &e);
                    state.contexts.remove(i);
                }
                Err(e) => {
                    log::debug(format!("[{}] context lost before the response: {e}", f.name).as_bytes());
                    state.contexts.remove(i);
                }
            }
        }
        self.slot.put(txn, state);
        resume
    }

    fn close(&self, txn: Txn) {
        let Some(state) = self.slot.take(txn) else {
            return;
        };
        let stream = TxnStream { txn, phase: Phase::Close };
        for fc in &state.contexts {
            let f = &self.filters[fc.filter];
            let r = f.pool.with_vm(fc.vm, |vm| {
                guest::attach_stream(vm, fc.ctx, stream);
                guest::finish_stream_context(vm, fc.ctx)
            });
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    self.failed(f, Some(fc.vm), "ending the stream context", &e);
                }
                Err(e) => log::debug(format!("[{}] context lost before close: {e}", f.name).as_bytes()),
            }
        }
    }
}
