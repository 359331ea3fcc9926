//! Body transforms (`TSTransformCreate`): a vconnection ATS puts between the body's producer
//! (client, origin or cache) and its consumer, whose input we read and whose output we write.
//!
//! Facts of ATS 9.2 this module relies on (read in its source, `proxy/Transform.cc`,
//! `InkAPI.cc`, `HttpSM.cc`):
//! - The transform's events are scheduled with `eventProcessor.schedule_imm(.., ET_NET)`,
//!   which picks the continuation's thread affinity when it has one; we set it to the
//!   transaction's thread at creation, and the trampoline re-schedules any data event that
//!   still arrives elsewhere onto that thread ([`TransformHandler`] handlers touch thread-local
//!   VMs).
//! - ATS waits for the first `TSVConnWrite` on the output (TRANSFORM_READ_READY) before it
//!   sends the client response headers (`SEND_RESPONSE_HDR` runs after it); the output VIO's
//!   `nbytes` at that moment becomes the response's `Content-Length`, `INT64_MAX` means
//!   unknown (chunked to HTTP/1.1 clients). A request transform must give the exact length: ATS
//!   refuses `INT64_MAX` there ("Request transformation failed to set content length").
//! - A transform ATS never opened is closed when the transaction ends; a closed transform's
//!   next event must destroy it and touch nothing else (the transaction may be gone).

use std::ffi::{c_int, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};

use super::hooks::EventThread;
use super::log;
use super::sys;
use super::txn::Txn;

/// Which body a transform sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The client's request body, on its way to the origin.
    Request,
    /// The response body (origin or cache), on its way to the client.
    Response,
}

/// Why a transform's handler runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransformEvent {
    /// Input may be available, the output drained, or [`Transform::wake`] was called.
    Data,
    /// The output's consumer took everything the output promised.
    OutputComplete,
}

/// What to tell the producer of the input after the handler returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upstream {
    /// Nothing.
    Quiet,
    /// Some input was consumed: send more (`WRITE_READY`).
    Ready,
    /// All input was consumed (`WRITE_COMPLETE`).
    Complete,
}

/// Handles the events of a transform whose state is an `S`.
pub trait TransformHandler: 'static {
    /// The per-transform state, dropped when ATS closes the transform.
    type State: 'static;

    /// Handles `event`. Runs on the transaction's thread with the transform open (so the
    /// transaction is alive). The returned [`Upstream`] is signalled after the state is no
    /// longer borrowed.
    fn on_event(t: Transform, state: &mut Self::State, event: TransformEvent) -> Upstream;
}

/// The data of a transform continuation: the thread it belongs to and the handler's state.
struct Slot<S> {
    owner: EventThread,
    state: S,
}

/// A handle on one transform (`TSVConn`). Valid until ATS closes it; the plugin keeps copies
/// only where that cannot be outlived (inside the transaction's state, used from its hooks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transform(sys::TSVConn);

/// What [`Transform::read_input`] found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InputRead {
    /// Bytes appended to the caller's buffer (and consumed from the input).
    pub bytes: usize,
    /// The input is complete: every byte the producer promised was consumed.
    pub complete: bool,
    /// The input has no buffer: the producer never started or went away.
    pub no_buffer: bool,
}

impl Transform {
    /// Creates a transform for `txn` with `state`, bound to the current event thread, and adds
    /// it to the transaction's request or response transform hook. `None` when the current
    /// thread is not an event thread.
    pub fn create<H: TransformHandler>(txn: Txn, direction: Direction, state: H::State) -> Option<Transform> {
        let owner = EventThread::current()?;
        let slot = Box::into_raw(Box::new(Slot { owner, state }));
        let hook = match direction {
            Direction::Request => sys::TS_HTTP_REQUEST_TRANSFORM_HOOK,
            Direction::Response => sys::TS_HTTP_RESPONSE_TRANSFORM_HOOK,
        };
        // SAFETY: txn is live (Txn invariant); trampoline::<H> has the TSEventFunc signature;
        // the data is a Slot<H::State> that only trampoline::<H> reads and frees.
        unsafe {
            let vc = sys::TSTransformCreate(Some(trampoline::<H>), txn.raw());
            sys::TSContDataSet(vc as sys::TSCont, slot as *mut c_void);
            sys::TSContThreadAffinitySet(vc as sys::TSCont, owner.raw());
            sys::TSHttpTxnHookAdd(txn.raw(), hook, vc as sys::TSCont);
            Some(Transform(vc))
        }
    }

    /// Runs the handler again soon on its thread (e.g. once the response headers were
    /// filtered). Only for a transform that is open.
    pub fn wake(self) {
        // SAFETY: the transform is open (caller's contract); scheduling a vconnection's
        // continuation is allowed, and ATS counts the event before a close can free it.
        unsafe {
            let owner = sys::TSContThreadAffinityGet(self.0 as sys::TSCont);
            if !owner.is_null() {
                sys::TSContScheduleOnThread(self.0 as sys::TSCont, 0, owner);
            }
        }
    }

    /// The input's VIO and reader, or `None` when the input has no buffer (the producer never
    /// started or went away).
    fn input(self) -> Option<(sys::TSVIO, sys::TSIOBufferReader)> {
        // SAFETY: the transform is open (handler contract); a write VIO with a buffer has a
        // reader.
        unsafe {
            let vio = sys::TSVConnWriteVIOGet(self.0);
            if vio.is_null() || sys::TSVIOBufferGet(vio).is_null() {
                return None;
            }
            Some((vio, sys::TSVIOReaderGet(vio)))
        }
    }

    /// Moves up to `max` bytes of input into `out`.
    pub fn read_input(self, out: &mut Vec<u8>, max: usize) -> InputRead {
        let read = self.peek_input(out, max);
        self.consume_input(read.bytes);
        read
    }

    /// Copies up to `max` bytes of input into `out` without consuming them (see
    /// [`Transform::consume_input`], [`Output::pass_input`]); `complete` says whether the input
    /// will be complete once they are consumed.
    pub fn peek_input(self, out: &mut Vec<u8>, max: usize) -> InputRead {
        let Some((vio, reader)) = self.input() else {
            return InputRead { no_buffer: true, ..InputRead::default() };
        };
        // SAFETY: the transform is open (handler contract); the VIO, its buffer and reader are
        // ATS's; the block pointers are read within this call only.
        unsafe {
            let todo = sys::TSVIONTodoGet(vio);
            let want = todo.min(sys::TSIOBufferReaderAvail(reader)).min(max.min(i64::MAX as usize) as i64).max(0);
            out.reserve(want as usize);
            let mut left = want;
            let mut block = sys::TSIOBufferReaderStart(reader);
            while left > 0 && !block.is_null() {
                let mut avail: i64 = 0;
                let p = sys::TSIOBufferBlockReadStart(block, reader, &mut avail);
                let n = avail.min(left);
                if n > 0 && !p.is_null() {
                    out.extend_from_slice(std::slice::from_raw_parts(p as *const u8, n as usize));
                    left -= n;
                }
                block = sys::TSIOBufferBlockNext(block);
            }
            let got = want - left;
            InputRead { bytes: got as usize, complete: todo - got <= 0, no_buffer: false }
        }
    }

    /// Consumes `n` bytes of input (at most what [`Transform::peek_input`] saw).
    pub fn consume_input(self, n: usize) {
        if n == 0 {
            return;
        }
        let Some((vio, reader)) = self.input() else { return };
        // SAFETY: the transform is open (handler contract); the VIO and its reader are ATS's.
        unsafe {
            let n = (n.min(i64::MAX as usize) as i64).min(sys::TSIOBufferReaderAvail(reader));
            sys::TSIOBufferReaderConsume(reader, n);
            sys::TSVIONDoneSet(vio, sys::TSVIONDoneGet(vio) + n);
        }
    }

    /// Starts the output: `nbytes` is the body's length when known (the response's
    /// `Content-Length`), `None` for "until [`Output::finish`]" (chunked). Opening the output
    /// lets ATS go on to send the headers.
    pub fn open_output(self, nbytes: Option<u64>) -> Output {
        let n = nbytes.map_or(i64::MAX, |n| n.min(i64::MAX as u64 - 1) as i64);
        // SAFETY: the transform is open, so its output vconnection exists; the buffer and
        // reader are ours until Output is dropped.
        unsafe {
            let vc = sys::TSTransformOutputVConnGet(self.0);
            let buf = sys::TSIOBufferCreate();
            let reader = sys::TSIOBufferReaderAlloc(buf);
            let vio = sys::TSVConnWrite(vc, self.0 as sys::TSCont, reader, n);
            Output { buf, vio }
        }
    }

    /// Ends the output with an error: the consumer (client or origin connection) is aborted.
    pub fn abort_output(self) {
        // SAFETY: the transform is open, so its output vconnection exists.
        unsafe {
            let vc = sys::TSTransformOutputVConnGet(self.0);
            if !vc.is_null() {
                sys::TSVConnAbort(vc, 1);
            }
        }
    }
}

/// A transform's output: a buffer ATS reads through a VIO. Destroyed with the transform's
/// state (after ATS closed the transform).
pub struct Output {
    buf: sys::TSIOBuffer,
    vio: sys::TSVIO,
}

impl Output {
    /// Appends `bytes` to the output (ATS reads them after [`Output::reenable`]).
    pub fn write(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() {
            // SAFETY: buf is our live buffer; bytes is valid for its length (copied by ATS).
            unsafe { sys::TSIOBufferWrite(self.buf, bytes.as_ptr() as *const c_void, bytes.len() as i64) };
        }
    }

    /// Appends the next `n` bytes of `t`'s input to the output without copying them (ATS's
    /// buffer blocks are shared, `TSIOBufferCopy`), and consumes them from the input: the
    /// pass-through of a chunk no filter changed. `t` must be the transform of this output.
    pub fn pass_input(&mut self, t: Transform, n: usize) {
        if n == 0 {
            return;
        }
        let Some((_, reader)) = t.input() else { return };
        // SAFETY: the transform is open (handler contract), so its input reader is ATS's live
        // one; buf is our live buffer; TSIOBufferCopy references the blocks.
        unsafe {
            let n = (n.min(i64::MAX as usize) as i64).min(sys::TSIOBufferReaderAvail(reader));
            sys::TSIOBufferCopy(self.buf, reader, n, 0);
        }
        t.consume_input(n);
    }

    /// Declares the output complete at `total` bytes.
    pub fn finish(&mut self, total: u64) {
        // SAFETY: vio is the live output VIO.
        unsafe { sys::TSVIONBytesSet(self.vio, total.min(i64::MAX as u64) as i64) };
    }

    /// Lets the consumer read what was written. Asynchronous: ATS schedules the consumer.
    pub fn reenable(&self) {
        // SAFETY: vio is the live output VIO.
        unsafe { sys::TSVIOReenable(self.vio) };
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        // SAFETY: the buffer is ours; the transform is closed, so ATS no longer reads it.
        unsafe { sys::TSIOBufferDestroy(self.buf) };
    }
}

unsafe extern "C" fn trampoline<H: TransformHandler>(
    cont: sys::TSCont,
    event: sys::TSEvent,
    edata: *mut c_void,
) -> c_int {
    let vc = cont as sys::TSVConn;
    // SAFETY: cont is the transform created in `Transform::create::<H>`; its data is a
    // Slot<H::State> from Box::into_raw, freed only here (on close), after which ATS delivers
    // no further events to this function (TSContDestroy marks it deleted).
    unsafe {
        let slot = sys::TSContDataGet(cont) as *mut Slot<H::State>;
        if sys::TSVConnClosedGet(vc) != 0 {
            if !slot.is_null() {
                sys::TSContDataSet(cont, std::ptr::null_mut());
                drop(Box::from_raw(slot));
            }
            sys::TSContDestroy(cont);
            return 0;
        }
        if slot.is_null() {
            return 0;
        }
        let ev = match event {
            sys::TS_EVENT_ERROR => {
                // The producer failed: pass the error upstream, as ATS's examples do.
                let input = sys::TSVConnWriteVIOGet(vc);
                if !input.is_null() {
                    sys::TSContCall(sys::TSVIOContGet(input), sys::TS_EVENT_ERROR, input as *mut c_void);
                }
                return 0;
            }
            sys::TS_EVENT_VCONN_WRITE_COMPLETE if !edata.is_null() => {
                // Our output's consumer is done: nothing more will be written.
                sys::TSVConnShutdown(sys::TSTransformOutputVConnGet(vc), 0, 1);
                TransformEvent::OutputComplete
            }
            _ => TransformEvent::Data,
        };
        let owner = (*slot).owner;
        if EventThread::current() != Some(owner) {
            // Not the transaction's thread: its VMs live there.
            log::debug(b"body transform event off the transaction's thread; re-scheduled there");
            sys::TSContScheduleOnThread(cont, 0, owner.raw());
            return 0;
        }
        let t = Transform(vc);
        let upstream = match catch_unwind(AssertUnwindSafe(|| H::on_event(t, &mut (*slot).state, ev))) {
            Ok(u) => u,
            Err(_) => {
                log::error(b"ats_wasm: internal error (panic) in a body transform; the response is aborted");
                t.abort_output();
                Upstream::Quiet
            }
        };
        // No borrow of the state is alive here: the producer's handler may run at once.
        let signal = match upstream {
            Upstream::Quiet => return 0,
            Upstream::Ready => sys::TS_EVENT_VCONN_WRITE_READY,
            Upstream::Complete => sys::TS_EVENT_VCONN_WRITE_COMPLETE,
        };
        let input = sys::TSVConnWriteVIOGet(vc);
        if !input.is_null() && !sys::TSVIOBufferGet(input).is_null() {
            sys::TSContCall(sys::TSVIOContGet(input), signal, input as *mut c_void);
        }
    }
    0
}

/// Asks ATS not to cache a transformed response and to cache the untransformed one
/// (`TSHttpTxnTransformedRespCache(txn, 0)`, `TSHttpTxnUntransformedRespCache(txn, 1)`), or
/// the reverse when `transformed`.
pub fn cache_transformed(txn: Txn, transformed: bool) {
    // SAFETY: txn is live (Txn invariant).
    unsafe {
        sys::TSHttpTxnTransformedRespCache(txn.raw(), transformed as c_int);
        sys::TSHttpTxnUntransformedRespCache(txn.raw(), (!transformed) as c_int);
    }
}
