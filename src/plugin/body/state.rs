//! The body side of a transaction's state (kept in the transaction's state by the plugin).
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::ts::transform::Transform;

/// What the response transform and the transaction's hooks tell each other; shared with the
/// transform's state, which ATS may destroy on another thread (hence atomics).
#[derive(Debug, Default)]
pub(crate) struct ResponseSignals {
    /// The response header callbacks are done: body callbacks may run.
    headers_done: AtomicBool,
    /// The response transform opened its output (ATS is sending the headers).
    output_open: AtomicBool,
}

impl ResponseSignals {
    pub(super) fn headers_done(&self) -> bool {
        self.headers_done.load(Ordering::Acquire)
    }

    pub(super) fn set_headers_done(&self) {
        self.headers_done.store(true, Ordering::Release);
    }

    pub(super) fn output_open(&self) -> bool {
        self.output_open.load(Ordering::Acquire)
    }

    pub(super) fn set_output_open(&self) {
        self.output_open.store(true, Ordering::Release);
    }
}

/// The body side of a transaction's state.
#[derive(Default)]
pub(crate) struct TxnBodies {
    /// Transforms were considered (once per transaction).
    pub(super) installed: bool,
    /// The response transform, if any.
    pub(super) response: Option<Transform>,
    /// Shared with the response transform, if there is one (see [`ResponseSignals`]).
    pub(super) signals: Option<Arc<ResponseSignals>>,
    /// A local response from the response phase: its body replaces the response body.
    pub(super) local_body: Option<Vec<u8>>,
}

impl TxnBodies {
    /// Transforms are to be chosen again (a remap rule's filters joined a transaction for
    /// which nothing was installed).
    pub(crate) fn choose_again(&mut self) {
        self.installed = false;
    }

    /// Whether transforms were chosen already.
    pub(crate) fn chosen(&self) -> bool {
        self.installed
    }

    /// Whether ATS opened the response transform (its output is open, the origin or cache
    /// feeds it): from then on the response can only go out through it.
    pub(crate) fn response_transform_open(&self) -> bool {
        self.signals.as_ref().is_some_and(|s| s.output_open())
    }

    /// Whether a response transform can replace the response body.
    pub(crate) fn has_response_transform(&self) -> bool {
        self.response.is_some()
    }
}
