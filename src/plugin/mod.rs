//! The ATS plugin: `TSPluginInit` → configuration → filters, and transaction hooks →
//! Proxy-Wasm callbacks.
//!
//! Each configured filter has one compiled module and a [`VmPool`](ats_wasm_pool::VmPool)
//! with VMs per net thread; the filters of one configuration form a generation, replaced as a
//! whole by a reload. At `READ_REQUEST_HDR` the transaction pins its thread's generation and
//! every filter, in `plugin.config` order,
//! leases a VM from its current thread's pool (`shared`: one of the thread's long-lived VMs;
//! `transaction`: a fresh VM of its own), gets a stream context in it and runs
//! `proxy_on_request_headers`; at `SEND_RESPONSE_HDR` the filters run
//! `proxy_on_response_headers` in reverse order (as Envoy does); at `TXN_CLOSE` each context
//! ends with `proxy_on_done`, `proxy_on_log`, `proxy_on_delete`, the leases go back and the
//! thread's pools refill (after the response, so off the request path).
//!
//! Rooms, lowest first (each imports only from rooms above it in this list):
//! - [`stream`]: phases, the stream handle, stream controls; [`live`]: transaction ids that
//!   outlive a hook; [`diags`]: diags.log line helpers;
//! - [`properties`], [`backend`]: the ABI backend over ATS — answers what it can at once and
//!   puts everything else a guest asks for into the VM's outbox ([`backend::Outbox`]);
//! - [`telemetry`]: counters, callback timing and the Prometheus endpoint; `filter`: one loaded
//!   filter (module, pools, settings);
//! - this file: [`Plugin`], the per-transaction state and the hook entry;
//! - `generation`: the filters of one configuration, pinned by each transaction; `failure`:
//!   the failure policy; `delivery`: per-thread work (adopting generations, ticks,
//!   shared-queue mailboxes, transactions owning VMs); `pause`: the pause state machine;
//!   `loops`: the call depth of requests, so calls that come back into ATS do not loop;
//!   `http_call`: sending calls and delivering their responses; `effects`: applying a
//!   callback's outbox; `chain`: the request / response / close runners; `body`: body
//!   transforms; [`startup`]: `init` and the filter loader; `reload`: reload triggers,
//!   building and publishing a new generation, status.
#![forbid(unsafe_code)]

pub mod backend;
mod body;
mod chain;
mod delivery;
pub mod diags;
mod effects;
mod failure;
mod filter;
mod generation;
mod http_call;
pub mod live;
mod loops;
mod pause;
pub mod properties;
mod reload;
pub mod remap;
pub mod startup;
pub mod stream;
pub mod telemetry;

use std::sync::OnceLock;

use ats_wasm_pool::LeasedVm;

use crate::abi::HostState;
use crate::ts::hooks::{HttpHook, TxnCont, TxnHandler, TxnTimer};
use crate::ts::txn::{Resume, Txn, TxnSlot};
use backend::AtsBackend;
use body::state::TxnBodies;
use generation::Chain;
use stream::Phase;

/// Everything the hooks need, set once by [`startup::init`]. The filters are not here: they
/// belong to a [`generation`], which a transaction pins at its start.
struct Plugin {
    slot: TxnSlot<TxnState>,
    cont: TxnCont,
    /// Builds filters (start-up, reloads); owns the engine, so it is dropped last.
    loader: startup::Loader,
}

static PLUGIN: OnceLock<Plugin> = OnceLock::new();

/// One filter's context in one transaction, in the VM it leased.
struct FilterCtx {
    filter: usize,
    lease: LeasedVm<HostState<AtsBackend>>,
    ctx: u32,
}

/// Per-transaction state: its generation, the live contexts, in chain order, the extra headers
/// of a local response a filter sent from the request phase, and where the transaction is
/// parked.
struct TxnState {
    /// The global generation pinned at `READ_REQUEST_HDR` and the matched remap rule's filters;
    /// every `filter` index below is into this chain, and it stays alive (with its VMs) while
    /// the transaction does.
    chain: Chain,
    /// `POST_REMAP` was added: the rule's request callbacks and the body transforms wait for it.
    post_remap: bool,
    /// `POST_REMAP` was reached: the request phase is complete once its filters ran.
    remapped: bool,
    /// No filter runs on this transaction (an HTTP call of ours that came back): remap rules
    /// leave it alone too.
    exempt: bool,
    contexts: Vec<FilterCtx>,
    local_response_headers: Option<Vec<(Vec<u8>, Vec<u8>)>>,
    /// That local response's `Content-Type` (empty for none) and body length.
    local_response_body: Option<(Vec<u8>, usize)>,
    /// That local response's status, when ATS is told to answer through its error path
    /// (a remap rule's filter answered at `POST_REMAP`, where ATS makes a status below 400 a
    /// 500): `SEND_RESPONSE_HDR` puts it back.
    local_response_status: Option<u16>,
    /// A fail-closed filter failed in the response phase: ATS answers 503, and no filter runs
    /// on that answer.
    response_failed: bool,
    paused: Option<Paused>,
    hooks_added: bool,
    bodies: TxnBodies,
    /// Counted in `ats_wasm_live_objects{kind="transaction_state"}`.
    _live: telemetry::objects::Counted<{ telemetry::objects::TXN_STATE }>,
}

impl TxnState {
    fn new(chain: Chain) -> Self {
        TxnState {
            contexts: Vec::with_capacity(chain.len()),
            chain,
            post_remap: false,
            remapped: false,
            exempt: false,
            local_response_headers: None,
            local_response_body: None,
            local_response_status: None,
            response_failed: false,
            paused: None,
            hooks_added: false,
            bodies: TxnBodies::default(),
            _live: telemetry::objects::Counted::new(),
        }
    }
}

/// Where a parked transaction goes on: the phase, and the next filter (request phase: index
/// into the chain) or the context index below which response filters still have to run.
/// The `pause` room makes, resumes and times out pauses.
struct Paused {
    phase: Phase,
    next: usize,
    /// Goes off after the pausing filter's pause timeout; dropped (cancelled) with the pause.
    _timer: Option<TxnTimer>,
}

impl Paused {
    /// The filter (index into the chain) that paused, given the transaction's contexts.
    fn filter(&self, contexts: &[FilterCtx]) -> Option<usize> {
        match self.phase {
            Phase::Request => self.next.checked_sub(1),
            _ => contexts.get(self.next).map(|c| c.filter),
        }
    }
}

/// The transaction hooks' entry: every hook the plugin adds lands here.
struct Hooks;

impl TxnHandler for Hooks {
    fn on_hook(hook: HttpHook, txn: Txn) -> Resume {
        let Some(p) = PLUGIN.get() else {
            return Resume::Continue;
        };
        match hook {
            HttpHook::ReadRequestHdr => p.request_headers(txn),
            HttpHook::PostRemap => p.rule_request_headers(txn),
            HttpHook::SendRequestHdr => {
                if txn.is_internal() {
                    // Our HTTP calls' transactions.
                    Plugin::call_request_leaving(txn);
                } else {
                    // Transactions with a request body transform.
                    p.send_request_headers(txn);
                }
                Resume::Continue
            }
            HttpHook::SendResponseHdr => p.response_headers(txn),
            HttpHook::TxnClose => {
                p.close(txn);
                Resume::Continue
            }
        }
    }
}
