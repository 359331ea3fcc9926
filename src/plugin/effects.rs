//! Applying a callback's outbox — the one way a guest's requests reach ATS. After every guest
//! callback the runner takes the VM's [`Outbox`] and calls [`Plugin::settle`]: HTTP calls are
//! sent, shared-queue notices posted, stream controls for other transactions deferred to this
//! thread's next safe point, and what concerns the transaction whose callback ran (its local
//! response, its stream control) comes back for the runner to decide.
#![forbid(unsafe_code)]

use super::backend::{Outbox, PendingLocalResponse};
use super::stream::StreamControl;
use super::{Plugin, delivery, http_call, pause};
use crate::ts::log;
use crate::ts::txn::Txn;

/// What a guest asked for the transaction whose callback ran.
#[derive(Debug, Default)]
pub(super) struct Asked {
    /// Its local response, if it sent one.
    pub(super) local: Option<PendingLocalResponse>,
    /// The first stream control it issued for it, if any.
    pub(super) control: Option<StreamControl>,
}

impl Plugin {
    /// Applies `outbox`, taken after a callback that ran for `txn` (`None`: for no transaction,
    /// e.g. a tick): see the module doc. Local responses for any other transaction cannot be
    /// applied there (it is not at a point where ATS can answer it) and are dropped.
    pub(super) fn settle(&self, txn: Option<Txn>, outbox: Option<Box<Outbox>>) -> Asked {
        let mut asked = Asked::default();
        let Some(outbox) = outbox else {
            return asked;
        };
        let Outbox { local_responses, stream_controls, calls, queue_notices } = *outbox;
        for local in local_responses {
            if Some(local.txn) == txn {
                asked.local = Some(local);
            } else {
                log::debug(b"a local response for a transaction other than the callback's is dropped");
            }
        }
        for (t, control) in stream_controls {
            if Some(t) == txn {
                asked.control.get_or_insert(control);
            } else {
                pause::defer(t, control);
            }
        }
        for call in calls {
            http_call::send(call);
        }
        for target in queue_notices {
            delivery::notify_queue(target);
        }
        asked
    }
}
