//! The one way out of a guest callback: everything a guest asks of ATS while a callback runs
//! (a local response, continuing or closing a stream, an HTTP call, a shared-queue notice) is
//! written into the backend's [`Outbox`], and the plugin's runner applies it after the callback
//! returned — never inside it, where resuming a transaction could run its next hook on the
//! same stack. What can be checked at once (arguments, the upstream, the request's form) is
//! checked when the guest calls, so statuses still come back to it synchronously.
#![forbid(unsafe_code)]

use std::time::Duration;

use crate::abi::QueueTarget;
use crate::plugin::stream::StreamControl;
use crate::ts::txn::Txn;

/// A local response a guest asked for, waiting for the plugin to apply it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingLocalResponse {
    /// The transaction it answers.
    pub txn: Txn,
    /// Its status code.
    pub status: u16,
    /// Its body.
    pub body: Vec<u8>,
    /// Its `Content-Type` as the guest gave it; empty when it gave none (`text/plain` is then
    /// used for a body, and a response without a body gets none).
    pub content_type: Vec<u8>,
    /// Extra headers to put on the response (without `Content-Type`).
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
}

/// An HTTP call a guest made, checked and built, waiting to be sent.
#[derive(Debug, PartialEq, Eq)]
pub struct OutgoingCall {
    /// The VM that made it ([`crate::abi::HostState::vm_uid`]): where the response goes.
    pub vm: u64,
    /// The guest's token for it.
    pub token: u32,
    /// The transaction of the stream context that made it; `None` for a root context.
    pub txn: Option<Txn>,
    /// The request method.
    pub method: Vec<u8>,
    /// The absolute URL.
    pub url: Vec<u8>,
    /// The header fields to send.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// The body.
    pub body: Vec<u8>,
    /// The call's timeout; `None`: ATS's own timeouts only.
    pub timeout: Option<Duration>,
    /// Its place in the bounds on calls in flight, held until its fetch ends.
    pub slot: super::call_bounds::CallSlot,
}

/// What the guests of one VM asked for during the callbacks since the outbox was last taken
/// (in practice: one callback; a fresh VM's initializer may leave calls and queue notices for
/// its first callback to carry out).
#[derive(Debug, Default)]
pub struct Outbox {
    /// Local responses, at most one per transaction (a later one replaces an earlier one).
    pub local_responses: Vec<PendingLocalResponse>,
    /// `proxy_continue_stream` / `proxy_close_stream`, in the order asked.
    pub stream_controls: Vec<(Txn, StreamControl)>,
    /// HTTP calls to send, in the order made.
    pub calls: Vec<OutgoingCall>,
    /// Shared-queue items were enqueued for these registrations.
    pub queue_notices: Vec<QueueTarget>,
}

impl Outbox {
    /// Records a local response for its transaction, replacing one recorded before.
    pub(super) fn local_response(&mut self, response: PendingLocalResponse) {
        self.local_responses.retain(|p| p.txn != response.txn);
        self.local_responses.push(response);
    }
}
