//! The stream types: which phase a transaction is in, the ABI's stream handle in ATS, and what
//! a guest can ask of a paused stream.
#![forbid(unsafe_code)]

use crate::ts::txn::Txn;

/// Which hook a transaction is in, which decides the maps a guest can reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// `READ_REQUEST_HDR`: the client request is readable and writable.
    Request,
    /// `SEND_RESPONSE_HDR`: the response to the client is readable and writable too.
    Response,
    /// `SEND_RESPONSE_HDR` of a transaction whose response body goes through a transform, so
    /// a local response can replace the body.
    ResponseTransformed,
    /// A request body callback (request transform): as `Request`, plus the request body.
    RequestBody,
    /// A response body callback (response transform): as `Response` (the headers were sent
    /// already), plus the response body.
    ResponseBody,
    /// `TXN_CLOSE`: both readable (for `proxy_on_log`).
    Close,
}

impl Phase {
    /// Whether the response to the client exists in this phase.
    pub fn has_response(self) -> bool {
        !matches!(self, Phase::Request | Phase::RequestBody)
    }
}

/// One transaction in one phase: the ABI's stream handle in ATS. It is attached to a guest's
/// stream context for the length of one callback (and stays attached, unused, until the next
/// one or the context's end at `TXN_CLOSE`), so the transaction is open whenever a guest can
/// reach it.
#[derive(Clone, Copy, Debug)]
pub struct TxnStream {
    /// The transaction.
    pub txn: Txn,
    /// Its phase.
    pub phase: Phase,
}

/// What a guest asked for a paused transaction: go on, or end it with an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamControl {
    /// `proxy_continue_stream`.
    Continue,
    /// `proxy_close_stream`.
    Close,
}
