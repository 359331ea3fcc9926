//! Local responses from the response phase, when a response transform exists: the client gets
//! exactly the filter's status, headers and body.
#![forbid(unsafe_code)]

use super::super::backend::PendingLocalResponse;
use super::super::{Plugin, TxnState};
use crate::ts::txn::Txn;

/// Response fields a local response keeps from ATS's response: the framing ATS chose and the
/// fields it always sends.
const LOCAL_KEEPS: [&[u8]; 3] = [b"transfer-encoding", b"connection", b"date"];

impl Plugin {
    /// A filter sent a local response from `proxy_on_response_headers` (a response transform
    /// exists): the client gets exactly its status, headers and body.
    pub(in crate::plugin) fn apply_response_local(txn: Txn, state: &mut TxnState, local: PendingLocalResponse) {
        if let Some(h) = txn.client_response() {
            let mut names = Vec::new();
            h.for_each(&mut |k, _| {
                if !LOCAL_KEEPS.iter().any(|keep| keep.eq_ignore_ascii_case(k))
                    && !names.iter().any(|n: &Vec<u8>| n.eq_ignore_ascii_case(k))
                {
                    names.push(k.to_vec());
                }
            });
            for n in names {
                h.remove(&n);
            }
            h.set_status(local.status);
            match (&local.content_type[..], local.body.is_empty()) {
                (b"", true) => {}
                (b"", false) => {
                    h.add(b"content-type", b"text/plain");
                }
                (t, _) => {
                    h.add(b"content-type", t);
                }
            }
            for (k, v) in &local.headers {
                h.add(k, v);
            }
        }
        state.bodies.local_body = Some(local.body);
    }
}
