//! A filter's counters of refused guest writes — header writes, HTTP calls past their bounds,
//! shared data and queue items past theirs — each with a rate-limited WARNING line.
#![forbid(unsafe_code)]

use super::counters::{FilterMetrics, REFUSED_CALL_LINES_PER_MINUTE, REJECT_LINES_PER_MINUTE, left_out};
use crate::abi::SharedBound;
use crate::ts::log;

impl FilterMetrics {
    /// The filter's guest wrote an invalid header `what` (its name, when `invalid_name`, else
    /// its value) and the write was refused: counted, and one WARNING line — at most
    /// [`REJECT_LINES_PER_MINUTE`] a minute per filter, the next allowed line saying how many
    /// were left out.
    pub fn rejected_write(&self, invalid_name: bool, what: &str) {
        if let Some(c) = &self.rejected {
            c[usize::from(!invalid_name)].increment(1);
        }
        if let Some(suppressed) = self.reject_lines.allow(REJECT_LINES_PER_MINUTE) {
            let why = if invalid_name { "a name that is not a token" } else { "a value with CR, LF or NUL" };
            let more = left_out(suppressed);
            log::warning(
                format!("ats_wasm: filter \"{}\": refused to write {what} with {why} (BAD_ARGUMENT){more}", self.name)
                    .as_bytes(),
            );
        }
    }

    /// The filter's guest made an HTTP call past a bound on calls in flight — its VM's
    /// (`per_vm`) or its transaction's; `limits` are (per VM, per transaction). Counted, and one
    /// WARNING line, at most [`REFUSED_CALL_LINES_PER_MINUTE`] a minute per filter.
    pub fn refused_call(&self, per_vm: bool, limits: (u32, u32)) {
        if let Some(c) = &self.refused_calls {
            c[usize::from(!per_vm)].increment(1);
        }
        if let Some(suppressed) = self.refused_call_lines.allow(REFUSED_CALL_LINES_PER_MINUTE) {
            let why = if per_vm {
                format!("its VM has {} calls in flight (--max-calls-per-vm)", limits.0)
            } else {
                format!("its transaction has {} calls in flight (--max-calls-per-txn)", limits.1)
            };
            let more = if suppressed > 0 { format!(" ({suppressed} more such lines left out)") } else { String::new() };
            log::warning(
                format!("ats_wasm: filter \"{}\": HTTP call refused: {why} (INTERNAL_FAILURE){more}", self.name)
                    .as_bytes(),
            );
        }
    }

    /// The filter's guest wrote shared data or a queue item past `bound` and nothing was
    /// stored: counted, and one WARNING line — at most [`REJECT_LINES_PER_MINUTE`] a minute
    /// per filter, the next allowed line saying how many were left out.
    pub fn shared_refused(&self, bound: SharedBound) {
        if let Some(c) = &self.shared_refused {
            c[bound.index()].increment(1);
        }
        if let Some(suppressed) = self.shared_lines.allow(REJECT_LINES_PER_MINUTE) {
            let why = match bound {
                SharedBound::ValueSize => "the key and value (or queue item) exceed --max-shared-value (BAD_ARGUMENT",
                SharedBound::TotalSize => "its vm_id would hold more than --max-shared-data (INTERNAL_FAILURE",
                SharedBound::QueueItems => "the queue already holds 10000 items (INTERNAL_FAILURE",
            };
            let more = if suppressed > 0 { format!("; {suppressed} more such lines left out") } else { String::new() };
            log::warning(
                format!(
                    "ats_wasm: filter \"{}\": refused a shared data or queue write: {why}, nothing stored{more})",
                    self.name
                )
                .as_bytes(),
            );
        }
    }
}
