//! Per-route filters: the plugin as a remap plugin. A `remap.config` rule
//! `map FROM TO @plugin=libats_wasm.so @pparam=OPTION… @pparam=FILTER.yaml…` gets its own
//! filter chain — the files' filters in `@pparam` order, with their own modules (compiled once
//! per process by content), templates and thread-local pools, on the one engine — held as a
//! rule [`Generation`] by the rule's instance.
//!
//! - `TSRemapNewInstance` builds the chain, all or nothing: any bad option, file or module is
//!   one ERROR line naming the rule and the file, and ATS does not create the rule.
//! - `TSRemapDoRemap` (on the transaction's thread, after the global filters' request
//!   callbacks at `READ_REQUEST_HDR`) puts the chain into the transaction's state and adds
//!   `POST_REMAP`, where the rule's request callbacks run (`chain::rule_request_headers`):
//!   they may pause there, and `:path`/`:authority` writes still change the upstream request.
//!   Response callbacks run the rule's filters, then the global ones.
//! - A remap.config reload makes new instances; ATS deletes the old ones when no transaction
//!   holds the old table, and transactions in flight keep their chain (an `Arc`): the old
//!   chain retires — its VMs end — when the last of them closes.
#![forbid(unsafe_code)]

use std::sync::{Arc, Mutex, Weak};

use super::delivery;
use super::generation::{Chain, Generation};
use super::startup;
use super::telemetry::GENERATIONS;
use super::{PLUGIN, TxnState};
use crate::config;
use crate::ts::hooks::HttpHook;
use crate::ts::log;
use crate::ts::remap::RemapHandler;
use crate::ts::txn::Txn;

/// Every rule chain made so far that may still be alive, oldest first.
static RULES: Mutex<Vec<Weak<Generation>>> = Mutex::new(Vec::new());

/// The rule chains alive, newest per scope (a rule's old chain, still held by transactions
/// after a remap.config reload, is left out: it shares the new one's counters).
pub(super) fn live_rules() -> Vec<Arc<Generation>> {
    let mut rules = RULES.lock().unwrap_or_else(|e| e.into_inner());
    rules.retain(|w| w.strong_count() > 0);
    let mut live: Vec<Arc<Generation>> = Vec::new();
    for g in rules.iter().rev().filter_map(Weak::upgrade) {
        if !live.iter().any(|l| l.scope == g.scope) {
            live.push(g);
        }
    }
    live.reverse();
    live
}

/// Whether any remap rule has filters (then transactions with filters wait for `POST_REMAP`
/// before their body transforms are chosen).
pub(super) fn rules_exist() -> bool {
    GENERATIONS.remap_live.load(std::sync::atomic::Ordering::Relaxed) > 0
}

/// One rule's instance, owned by ATS: the rule's filter chain.
pub struct RuleInstance {
    chain: Arc<Generation>,
}

/// The plugin's [`RemapHandler`].
pub struct Rules;

impl RemapHandler for Rules {
    type Instance = RuleInstance;

    fn init() -> Result<(), String> {
        if PLUGIN.get().is_none() {
            startup::init_for_remap();
        }
        match PLUGIN.get() {
            Some(_) => Ok(()),
            None => Err("ats_wasm could not start (see diags.log)".into()),
        }
    }

    fn new_instance(from: &str, _to: &str, params: &[String]) -> Result<RuleInstance, String> {
        let scope = format!("remap:{from}");
        let made = build(&scope, params);
        match made {
            Ok(chain) => {
                let names: Vec<&str> = chain.filters.iter().map(|f| f.name.as_str()).collect();
                log::note(format!("ats_wasm: {scope}: filters {names:?} loaded").as_bytes());
                let chain = Arc::new(chain);
                RULES.lock().unwrap_or_else(|e| e.into_inner()).push(Arc::downgrade(&chain));
                Ok(RuleInstance { chain })
            }
            Err(e) => {
                GENERATIONS.remap_failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // ATS writes this into its own ERROR line ("failed to add remap rule at
                // <file> line <n>: failed to create instance for plugin …: <this>"): one line.
                Err(format!("ats_wasm: remap rule {from}: {e}; the rule is not loaded"))
            }
        }
    }

    fn do_remap(rule: &RuleInstance, txn: Txn) {
        if let Some(p) = PLUGIN.get() {
            p.rule_matched(txn, &rule.chain);
        }
    }
}

/// A rule's filter chain from its `@pparam`s, all or nothing.
fn build(scope: &str, params: &[String]) -> Result<Generation, String> {
    let p = PLUGIN.get().ok_or("ats_wasm did not start (see diags.log)")?;
    let loader = &p.loader;
    let args =
        config::parse_rule_args(params, &loader.config_dir, &loader.args).map_err(|e| format!("bad @pparam: {e}"))?;
    let configs = startup::read_configs(&args.yaml_files, &loader.config_dir, true)?;
    let filters = loader.load_filters(scope, configs, &args, true)?;
    Ok(Generation::rule(scope.to_string(), filters))
}

impl super::Plugin {
    /// `TSRemapDoRemap`: the transaction's chain gets the rule's filters; they run at
    /// `POST_REMAP`. Not for our own HTTP calls, nor for requests the global phase exempted
    /// (a call that came back, see `loops`).
    fn rule_matched(&self, txn: Txn, rule: &Arc<Generation>) {
        if txn.is_internal() {
            return;
        }
        let known = self.slot.with(txn, |state| {
            if state.exempt {
                return;
            }
            state.chain.rule = Some(Arc::clone(rule));
            if !state.post_remap {
                state.post_remap = true;
                self.cont.add_to_txn(txn, HttpHook::PostRemap);
            }
            if state.bodies.chosen() && !self.contexts_want_bodies(state) {
                // Nothing was installed for the global filters: the rule's may want bodies.
                state.bodies.choose_again();
            }
        });
        if known.is_some() {
            return;
        }
        // No global filter has a context in this transaction: a state of its own, closed at
        // `TXN_CLOSE` (so the rule's chain is let go even if `POST_REMAP` never comes).
        let Some(global) = delivery::pin() else { return };
        let mut state = TxnState::new(Chain { global, rule: Some(Arc::clone(rule)) });
        state.post_remap = true;
        state.hooks_added = true;
        self.cont.add_to_txn(txn, HttpHook::PostRemap);
        self.cont.add_to_txn(txn, HttpHook::SendResponseHdr);
        self.cont.add_to_txn(txn, HttpHook::TxnClose);
        self.slot.put(txn, state);
    }
}
