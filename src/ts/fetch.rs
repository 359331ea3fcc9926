//! Outgoing HTTP/1.1 requests from inside ATS, for `proxy_http_call`.
//!
//! Why ATS's fetch state machine (`TSFetchCreate` … `TSFetchLaunch`, stream mode with
//! `TS_FETCH_FLAGS_DECHUNK`) rather than `TSNetConnect` plus our own request writer and a
//! `TSHttpParser`: the fetch SM is `TSHttpConnect` underneath, so the request runs through
//! ATS's own HTTP state machine as an *internal* transaction. That gives DNS resolution of
//! names, origin connection pooling, chunked decoding, ATS's connect/inactivity timeouts and —
//! what a raw `TSNetConnect` cannot do, ATS 9.2 having no client-TLS API for plugins — `https`
//! upstreams: with an absolute `https://` URL ATS does the TLS to the origin itself. The price:
//! the request passes remap and every plugin's global hooks, ours included. The plugin marks
//! its calls with a header and, on seeing it on an internal transaction, skips remap and cache
//! and runs no filters (see `plugin::http_call`).
//!
//! Threads: the fetch SM runs on whichever net thread ATS gives the internal transaction, under
//! the mutex of the call's continuation (the fetch SM shares it: no `TS_FETCH_FLAGS_NEWLOCK`).
//! The timeout timer is scheduled on the caller's thread with the same continuation, so the
//! timer and the fetch events never run at once. Whatever ends the call (the body is complete,
//! an error, the timer) destroys the fetch SM and the continuation, and the outcome is posted
//! to the caller's thread (`TSContScheduleOnThread`) — always, even when the call ended on that
//! thread, so the handler never runs inside the guest call that started the request.
//!
//! Cancelling: ATS 9.2 has no call to abort a fetch from outside its events, and
//! `TSFetchDestroy` is only safe under the fetch's mutex. [`FetchHandle::cancel`] therefore
//! schedules an immediate event on the call's own continuation (on the caller's thread); it runs
//! under that mutex and ends the call like its timeout does ("cancelled"). The handle knows the
//! continuation only while the call is live: `finish` forgets it, under the handle's lock,
//! before destroying the continuation, so a cancel never schedules onto a destroyed one.
//! What ends the upstream side is the internal transaction itself: it is set up
//! (`Txn::set_up_as_plugin_call`) to abort when the fetch closes its end, and to time out by
//! itself.

use std::ffi::{CString, c_int, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::headers::HeaderMap;
use super::hooks::EventThread;
use super::log;
use super::sys;

/// The largest response body a call accepts; a larger one fails the call.
pub const MAX_BODY_BYTES: usize = 16 << 20;

/// One request to send.
pub struct FetchRequest<'a> {
    /// Request method, e.g. `GET`.
    pub method: &'a [u8],
    /// Absolute URL (`http://host:port/path?query` or `https://…`).
    pub url: &'a [u8],
    /// Header fields (no pseudo-headers); `Host` should be among them.
    pub headers: &'a [(&'a [u8], &'a [u8])],
    /// Request body; a `Content-Length` header is added when it is not empty.
    pub body: &'a [u8],
    /// When to give up; `None`: only ATS's own timeouts apply.
    pub timeout: Option<Duration>,
}

/// A complete response.
#[derive(Debug, Default)]
pub struct FetchResponse {
    /// The status code.
    pub status: u16,
    /// Header fields in order.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

/// How a request ended.
#[derive(Debug)]
pub enum FetchOutcome {
    /// A complete response arrived.
    Response(FetchResponse),
    /// No (complete) response: why.
    Failed(&'static str),
}

/// Receives outcomes on the thread that started the request.
pub trait FetchHandler: 'static {
    /// The request started with `tag` ended.
    fn on_fetch_done(tag: u64, outcome: FetchOutcome);
}

/// A live call's continuation, as its [`FetchHandle`] knows it.
struct Live {
    cont: sys::TSCont,
    home: EventThread,
}

// SAFETY: a TSCont is an opaque handle; it is only used to schedule an event
// (`TSContScheduleOnThread`, callable from any thread), and only while the call is live (see
// `Live`'s owner, `FetchHandle`).
unsafe impl Send for Live {}

/// Cancels a request in flight ([`fetch`]'s result). Dropping it does not cancel.
pub struct FetchHandle {
    live: Arc<Mutex<Option<Live>>>,
}

fn lock(m: &Mutex<Option<Live>>) -> MutexGuard<'_, Option<Live>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FetchHandle {
    /// Ends the request soon, on its caller's thread, as if its timeout had passed: the fetch
    /// is destroyed and its handler gets [`FetchOutcome::Failed`] (`"cancelled"`). Nothing
    /// happens when it already ended (or a cancel is already on its way).
    pub fn cancel(&self) {
        if let Some(live) = lock(&self.live).take() {
            // SAFETY: the continuation is live: `finish` clears this slot (under the same lock)
            // before destroying it, and it is not cleared yet. The scheduled event keeps ATS
            // from freeing the continuation before the event ran.
            unsafe { sys::TSContScheduleOnThread(live.cont, 0, live.home.raw()) };
        }
    }
}

/// One request in flight: the data of its continuation.
struct Call {
    fetch: sys::TSFetchSM,
    /// Shared with the [`FetchHandle`]; emptied when the call ends.
    live: Arc<Mutex<Option<Live>>>,
    /// The pending timeout event; null when none or when it is the event being handled.
    timer: sys::TSAction,
    home: EventThread,
    tag: u64,
    deliver: fn(u64, FetchOutcome),
    response: FetchResponse,
    head_done: bool,
}

fn cstring(b: &[u8]) -> Option<CString> {
    CString::new(b).ok()
}

/// Sends `req` and calls `H::on_fetch_done(tag, …)` exactly once, later, on `home` (the current
/// thread in practice). Returns `None` (and calls nothing) when the request cannot be started
/// (a NUL byte in the method or URL, or ATS refused).
pub fn fetch<H: FetchHandler>(req: &FetchRequest<'_>, home: EventThread, tag: u64) -> Option<FetchHandle> {
    let (Some(method), Some(url)) = (cstring(req.method), cstring(req.url)) else {
        return None;
    };
    // The internal transaction's client address: loopback (allowed by the default ip_allow).
    // SAFETY: a zeroed sockaddr_in is a valid value; fields are set below.
    let mut client: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    client.sin_family = libc::AF_INET as libc::sa_family_t;
    client.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
    // ATS asserts a non-zero port (TSHttpConnectWithPluginId); nothing listens on it.
    client.sin_port = 1u16.to_be();

    // SAFETY: fetch_event has the TSEventFunc signature; the continuation gets a mutex of its
    // own, which the fetch SM shares (it is created without TS_FETCH_FLAGS_NEWLOCK).
    let cont = unsafe { sys::TSContCreate(Some(fetch_event), sys::TSMutexCreate()) };
    // SAFETY: cont was just created.
    let mutex = unsafe { sys::TSContMutexGet(cont) };
    // Held while the call is set up: the fetch SM may deliver events on another thread as
    // soon as it is launched, and they must find the call complete.
    // SAFETY: mutex is the continuation's; unlocked below on every path.
    unsafe { sys::TSMutexLock(mutex) };
    // SAFETY: cont is valid; the strings are NUL-terminated and outlive the call (ATS copies
    // them into the request buffer); client is a valid sockaddr_in.
    let fetch = unsafe {
        sys::TSFetchCreate(
            cont,
            method.as_ptr(),
            url.as_ptr(),
            c"HTTP/1.1".as_ptr(),
            &client as *const libc::sockaddr_in as *const sys::sockaddr,
            sys::TS_FETCH_FLAGS_DECHUNK as c_int,
        )
    };
    if fetch.is_null() {
        // SAFETY: locked above; cont has no pending events and is not used again.
        unsafe {
            sys::TSMutexUnlock(mutex);
            sys::TSContDestroy(cont);
        }
        return None;
    }
    let clamp = |n: usize| n.min(c_int::MAX as usize) as c_int;
    for (k, v) in req.headers {
        // SAFETY: fetch is live; the slices are valid for their lengths (ATS copies them).
        unsafe {
            sys::TSFetchHeaderAdd(fetch, k.as_ptr() as *const _, clamp(k.len()), v.as_ptr() as *const _, clamp(v.len()))
        };
    }
    if !req.body.is_empty() {
        let len = req.body.len().to_string();
        // SAFETY: as above.
        unsafe {
            sys::TSFetchHeaderAdd(fetch, c"Content-Length".as_ptr(), 14, len.as_ptr() as *const _, clamp(len.len()))
        };
    }
    let live = Arc::new(Mutex::new(Some(Live { cont, home })));
    let call = Box::new(Call {
        fetch,
        live: live.clone(),
        timer: std::ptr::null_mut(),
        home,
        tag,
        deliver: H::on_fetch_done,
        response: FetchResponse::default(),
        head_done: false,
    });
    let call = Box::into_raw(call);
    // SAFETY: the continuation owns the call from here; fetch_event frees it exactly once.
    unsafe { sys::TSContDataSet(cont, call as *mut c_void) };
    if let Some(t) = req.timeout {
        let ms = super::hooks::schedule_ms(t);
        // SAFETY: cont and the thread are valid; the mutex is held (schedule takes it too).
        let timer = unsafe { sys::TSContScheduleOnThread(cont, ms, home.raw()) };
        // SAFETY: call is live and only reachable under the mutex, which this thread holds.
        unsafe { (*call).timer = timer };
    }
    // SAFETY: fetch is live; the body is written after launch, as the API requires. The only
    // event a launch delivers on this thread is its synchronous failure (ATS not ready for
    // internal connections), which ends the call: the continuation's data is then null and
    // the fetch SM gone, so nothing but `cont` (whose destruction ATS defers to a later event,
    // keeping its mutex alive) is touched after that.
    unsafe {
        sys::TSFetchLaunch(fetch);
        if !req.body.is_empty() && sys::TSContDataGet(cont) == call as *mut c_void {
            sys::TSFetchWriteData(fetch, req.body.as_ptr() as *const c_void, req.body.len());
        }
        sys::TSMutexUnlock(mutex);
    }
    Some(FetchHandle { live })
}

unsafe extern "C" fn fetch_event(cont: sys::TSCont, event: sys::TSEvent, _edata: *mut c_void) -> c_int {
    // SAFETY: cont's data is null or the Call set by `fetch`; ATS holds cont's mutex here.
    let call = unsafe { sys::TSContDataGet(cont) } as *mut Call;
    if call.is_null() {
        return 0;
    }
    // SAFETY: non-null: the live call, reachable only under the held mutex.
    let r = catch_unwind(AssertUnwindSafe(|| unsafe { on_event(cont, &mut *call, event) }));
    match r {
        Ok(None) => {}
        Ok(Some(outcome)) => finish(cont, call, outcome),
        Err(_) => {
            log::error(b"ats_wasm: internal error (panic) in an HTTP call; the call fails");
            finish(cont, call, FetchOutcome::Failed("internal error"));
        }
    }
    0
}

/// Reads what the fetch SM has of the body. `false` when it grew over [`MAX_BODY_BYTES`].
///
/// # Safety
/// `call.fetch` must be live, and its mutex held.
unsafe fn read_body(call: &mut Call) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        // SAFETY: guaranteed by the caller; chunk is writable for its length.
        let n = unsafe { sys::TSFetchReadData(call.fetch, chunk.as_mut_ptr() as *mut c_void, chunk.len()) };
        if n <= 0 {
            return true;
        }
        call.response.body.extend_from_slice(&chunk[..n as usize]);
        if call.response.body.len() > MAX_BODY_BYTES {
            return false;
        }
    }
}

/// Handles one event; `Some` when the call is over.
///
/// # Safety
/// `call.fetch` must be live and the continuation's mutex held.
unsafe fn on_event(_cont: sys::TSCont, call: &mut Call, event: sys::TSEvent) -> Option<FetchOutcome> {
    const HEAD_DONE: c_int = sys::TS_FETCH_EVENT_EXT_HEAD_DONE;
    const BODY_READY: c_int = sys::TS_FETCH_EVENT_EXT_BODY_READY;
    const BODY_DONE: c_int = sys::TS_FETCH_EVENT_EXT_BODY_DONE;
    const HEAD_READY: c_int = sys::TS_FETCH_EVENT_EXT_HEAD_READY;
    match event as c_int {
        HEAD_READY => None,
        HEAD_DONE => {
            let fetch = call.fetch;
            // SAFETY: the fetch SM is live and its response header parsed (HEAD_DONE); the
            // header lives in the SM, read here before anything can destroy it.
            let h = unsafe {
                HeaderMap::from_getter(|b, l| {
                    *b = sys::TSFetchRespHdrMBufGet(fetch);
                    *l = sys::TSFetchRespHdrMLocGet(fetch);
                    if (*b).is_null() || (*l).is_null() { sys::TS_ERROR } else { sys::TS_SUCCESS }
                })
            };
            let Some(h) = h else { return Some(FetchOutcome::Failed("no response header")) };
            call.response.status = h.status();
            h.for_each(&mut |k, v| call.response.headers.push((k.to_vec(), v.to_vec())));
            call.head_done = true;
            if call.response.status == 0 { Some(FetchOutcome::Failed("malformed response")) } else { None }
        }
        BODY_READY | BODY_DONE => {
            // SAFETY: guaranteed by the caller.
            if !unsafe { read_body(call) } {
                return Some(FetchOutcome::Failed("response body too large"));
            }
            if event as c_int == BODY_DONE {
                Some(FetchOutcome::Response(std::mem::take(&mut call.response)))
            } else {
                None
            }
        }
        _ if event == sys::TS_EVENT_TIMEOUT => {
            // This is the timer's own event: it must not be cancelled.
            call.timer = std::ptr::null_mut();
            Some(FetchOutcome::Failed("timeout"))
        }
        // FetchHandle::cancel's event (the fetch SM sends no immediate events).
        _ if event == sys::TS_EVENT_IMMEDIATE => Some(FetchOutcome::Failed("cancelled")),
        _ if call.head_done => Some(FetchOutcome::Failed("connection closed before the body was complete")),
        _ => Some(FetchOutcome::Failed("connection failed")),
    }
}

/// Ends the call: cancels its timer, destroys the fetch SM and the continuation, and posts the
/// outcome to the caller's thread. Runs under the continuation's mutex.
fn finish(cont: sys::TSCont, call: *mut Call, outcome: FetchOutcome) {
    // SAFETY: call came from Box::into_raw in `fetch` and is freed only here, once: the
    // continuation's data is cleared first, so no later event reaches it.
    let call = unsafe {
        sys::TSContDataSet(cont, std::ptr::null_mut());
        Box::from_raw(call)
    };
    // From here no cancel can schedule onto the continuation destroyed below.
    lock(&call.live).take();
    // SAFETY: the mutex is held (this runs in the continuation's handler), as cancelling the
    // timer and destroying the fetch SM require. Inside a fetch event the SM defers its own
    // cleanup until the event returns; it sends no further events to `cont`. The
    // continuation is destroyed last; ATS frees it once its handler has returned.
    unsafe {
        if !call.timer.is_null() {
            sys::TSActionCancel(call.timer);
        }
        sys::TSFetchDestroy(call.fetch);
        sys::TSContDestroy(cont);
    }
    post(call.home, call.deliver, call.tag, outcome);
}

/// An outcome on its way to the caller's thread.
struct Delivery {
    deliver: fn(u64, FetchOutcome),
    tag: u64,
    outcome: FetchOutcome,
}

fn post(home: EventThread, deliver: fn(u64, FetchOutcome), tag: u64, outcome: FetchOutcome) {
    let d = Box::into_raw(Box::new(Delivery { deliver, tag, outcome }));
    // SAFETY: deliver_event has the TSEventFunc signature; its data is the Delivery, freed by
    // deliver_event (or below when ATS refuses to schedule).
    unsafe {
        let c = sys::TSContCreate(Some(deliver_event), sys::TSMutexCreate());
        sys::TSContDataSet(c, d as *mut c_void);
        if sys::TSContScheduleOnThread(c, 0, home.raw()).is_null() {
            drop(Box::from_raw(d));
            sys::TSContDestroy(c);
            log::error(b"ats_wasm: cannot deliver an HTTP call's response; it is dropped");
        }
    }
}

unsafe extern "C" fn deliver_event(cont: sys::TSCont, _event: sys::TSEvent, _edata: *mut c_void) -> c_int {
    // SAFETY: the data is the Delivery `post` leaked for this one-shot continuation; it is
    // taken back once, then the continuation is destroyed.
    let d = unsafe {
        let d = Box::from_raw(sys::TSContDataGet(cont) as *mut Delivery);
        sys::TSContDestroy(cont);
        d
    };
    let Delivery { deliver, tag, outcome } = *d;
    if catch_unwind(AssertUnwindSafe(|| deliver(tag, outcome))).is_err() {
        log::error(b"ats_wasm: internal error (panic) delivering an HTTP call's response; ATS goes on");
    }
    0
}
