//! The body side of a transaction's state (kept in the transaction's state by the plugin).
#![forbid(unsafe_code)]

use crate::ts::transform::Transform;

/// The body side of a transaction's state.
#[derive(Default)]
pub(crate) struct TxnBodies {
    /// Transforms were considered (once per transaction).
    pub(super) installed: bool,
    /// The response transform, if any.
    pub(super) response: Option<Transform>,
    /// The response header callbacks are done: body callbacks may run.
    pub(super) response_headers_done: bool,
    /// The response transform opened its output (ATS is sending the headers).
    pub(super) response_output_open: bool,
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

    /// Whether a response transform can replace the response body.
    pub(crate) fn has_response_transform(&self) -> bool {
        self.response.is_some()
    }
}
