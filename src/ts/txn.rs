//! HTTP transactions.

use std::cell::RefCell;
use std::ffi::{c_int, c_void};

use super::headers::HeaderMap;
use super::sys;

/// A handle on a live HTTP transaction (`TSHttpTxn`).
///
/// It is only valid between the transaction's start and the return of its `TXN_CLOSE` hook;
/// holders must not keep it past that.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Txn(sys::TSHttpTxn);

// SAFETY: a TSHttpTxn is an opaque handle. ATS runs each transaction's hooks one at a time, so
// moving the handle between threads cannot cause concurrent use through it.
unsafe impl Send for Txn {}

/// How to go on after a hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    /// `TSHttpTxnReenable(txn, TS_EVENT_HTTP_CONTINUE)`.
    Continue,
    /// `TSHttpTxnReenable(txn, TS_EVENT_HTTP_ERROR)`: ATS answers with an error response.
    Error,
    /// Not re-enabled now: the transaction waits until someone calls [`Txn::reenable`] later
    /// (from a continuation on its thread).
    Parked,
}

impl Txn {
    /// Wraps a raw transaction pointer received as hook data.
    ///
    /// # Safety
    /// `raw` must be a live transaction (the `edata` of an HTTP transaction hook event).
    pub unsafe fn from_raw(raw: *mut c_void) -> Self {
        Txn(raw as sys::TSHttpTxn)
    }

    /// Lets the transaction go on. ATS may run the next hook synchronously inside this call,
    /// so callers must hold no borrow of state that hook may need.
    pub fn reenable(self, how: Resume) {
        let ev = match how {
            Resume::Continue => sys::TS_EVENT_HTTP_CONTINUE,
            Resume::Error => sys::TS_EVENT_HTTP_ERROR,
            Resume::Parked => return,
        };
        // SAFETY: self is a live transaction (type invariant).
        unsafe { sys::TSHttpTxnReenable(self.0, ev) }
    }

    /// The client's request headers.
    pub fn client_request(self) -> Option<HeaderMap> {
        // SAFETY: live transaction; the getter fills the out-params on success.
        unsafe { HeaderMap::from_getter(|b, l| sys::TSHttpTxnClientReqGet(self.0, b, l)) }
    }

    /// The request ATS sends to the origin (valid from `SEND_REQUEST_HDR`).
    pub fn server_request(self) -> Option<HeaderMap> {
        // SAFETY: live transaction; the getter fills the out-params on success.
        unsafe { HeaderMap::from_getter(|b, l| sys::TSHttpTxnServerReqGet(self.0, b, l)) }
    }

    /// The response that will be sent to the client (valid from `SEND_RESPONSE_HDR`).
    pub fn client_response(self) -> Option<HeaderMap> {
        // SAFETY: as above.
        unsafe { HeaderMap::from_getter(|b, l| sys::TSHttpTxnClientRespGet(self.0, b, l)) }
    }

    /// The value in transaction user argument slot `idx`.
    fn user_arg(self, idx: i32) -> *mut c_void {
        match direct_args() {
            // SAFETY: live transaction; idx was reserved with TSUserArgIndexReserve, and the
            // direct accessors were checked to reach the same array (see `direct_args`).
            Some(d) => unsafe { (d.get)(self.0, idx) },
            // SAFETY: live transaction; idx was reserved with TSUserArgIndexReserve.
            None => unsafe { sys::TSUserArgGet(self.0 as *mut c_void, idx) },
        }
    }

    /// Stores `value` in transaction user argument slot `idx`.
    fn set_user_arg(self, idx: i32, value: *mut c_void) {
        match direct_args() {
            // SAFETY: as in `user_arg`; ATS stores the pointer without dereferencing it.
            Some(d) => unsafe { (d.set)(self.0, idx, value) },
            // SAFETY: as above.
            None => unsafe { sys::TSUserArgSet(self.0 as *mut c_void, idx, value) },
        }
    }

    /// Makes ATS answer this transaction itself with `status` and `body`
    /// (`TSHttpTxnStatusSet` + `TSHttpTxnErrorBodySet`). Resume with [`Resume::Continue`]
    /// afterwards: from `READ_REQUEST_HDR` ATS then builds the response without contacting the
    /// origin, for any status. (Measured on 9.2: resuming with `Resume::Error` instead turns
    /// 2xx/3xx statuses into "500 INKApi Error" and closes the connection.) An empty
    /// `content_type` leaves the response's `Content-Type` header as it is when ATS sends it.
    pub fn set_local_response(self, status: u16, body: &[u8], content_type: &str) {
        // SAFETY: live transaction. ATS takes ownership of both buffers and frees them with
        // TSfree, so they are allocated with TSmalloc and fully initialized here.
        unsafe {
            sys::TSHttpTxnStatusSet(self.0, status as sys::TSHttpStatus);
            let buf = sys::_TSmalloc(body.len().max(1), c"ats_wasm".as_ptr()) as *mut u8;
            std::ptr::copy_nonoverlapping(body.as_ptr(), buf, body.len());
            let ct = sys::_TSmalloc(content_type.len() + 1, c"ats_wasm".as_ptr()) as *mut u8;
            std::ptr::copy_nonoverlapping(content_type.as_ptr(), ct, content_type.len());
            *ct.add(content_type.len()) = 0;
            sys::TSHttpTxnErrorBodySet(self.0, buf as *mut _, body.len(), ct as *mut _);
        }
    }

    /// The status a plugin set for ATS to answer with (`TSHttpTxnStatusSet`, e.g. by
    /// [`Txn::set_local_response`]); 0 for none.
    pub fn answer_status(self) -> u16 {
        // SAFETY: live transaction; a plain read.
        unsafe { sys::TSHttpTxnStatusGet(self.0) as u16 }
    }

    /// Drops the body of the local response set with [`Txn::set_local_response`]
    /// (`TSHttpTxnErrorBodySet` with no buffer), at `SEND_RESPONSE_HDR`: ATS then sends it with
    /// `Content-Length: 0` and no body. (An empty buffer instead makes ATS 9.2 send its own
    /// error page.)
    pub fn clear_local_response_body(self) {
        // SAFETY: live transaction; ATS frees what it held and stores no buffer and no type.
        unsafe { sys::TSHttpTxnErrorBodySet(self.0, std::ptr::null_mut(), 0, std::ptr::null_mut()) }
    }

    /// The client request's URL as it was before remap (`TSHttpTxnPristineUrlGet`); in a
    /// reverse proxy its host and port come from the client's `Host` header.
    pub fn pristine_url(self) -> Option<super::headers::UrlParts> {
        let mut buf: sys::TSMBuffer = std::ptr::null_mut();
        let mut loc: sys::TSMLoc = std::ptr::null_mut();
        // SAFETY: live transaction; on success loc is a URL handle in buf, read then released.
        unsafe {
            if sys::TSHttpTxnPristineUrlGet(self.0, &mut buf, &mut loc) != sys::TS_SUCCESS || buf.is_null() {
                return None;
            }
            let parts = super::headers::UrlParts::read(buf, loc);
            sys::TSHandleMLocRelease(buf, std::ptr::null_mut(), loc);
            Some(parts)
        }
    }

    /// The client's address (`TSHttpTxnClientAddrGet`).
    pub fn client_addr(self) -> Option<std::net::SocketAddr> {
        // SAFETY: live transaction; ATS returns null or a valid sockaddr.
        unsafe { super::net::to_socket_addr(sys::TSHttpTxnClientAddrGet(self.0) as *const libc::sockaddr) }
    }

    /// The local address the client connected to (`TSHttpTxnIncomingAddrGet`).
    pub fn incoming_addr(self) -> Option<std::net::SocketAddr> {
        // SAFETY: as above.
        unsafe { super::net::to_socket_addr(sys::TSHttpTxnIncomingAddrGet(self.0) as *const libc::sockaddr) }
    }

    /// The origin server's address, once ATS has chosen it (`TSHttpTxnServerAddrGet`).
    pub fn server_addr(self) -> Option<std::net::SocketAddr> {
        // SAFETY: as above.
        unsafe { super::net::to_socket_addr(sys::TSHttpTxnServerAddrGet(self.0) as *const libc::sockaddr) }
    }

    /// The transaction's process-unique id (`TSHttpTxnIdGet`).
    pub fn id(self) -> u64 {
        // SAFETY: live transaction.
        unsafe { sys::TSHttpTxnIdGet(self.0) }
    }

    /// The client session's id (`TSHttpSsnIdGet`), the ABI's `connection.id`.
    pub fn session_id(self) -> i64 {
        // SAFETY: live transaction; its session outlives it.
        unsafe { sys::TSHttpSsnIdGet(sys::TSHttpTxnSsnGet(self.0)) }
    }

    /// Header and body bytes of the client request and of the response to the client:
    /// `(request headers, request body, response headers, response body)`.
    pub fn byte_counts(self) -> (i64, i64, i64, i64) {
        // SAFETY: live transaction.
        unsafe {
            (
                sys::TSHttpTxnClientReqHdrBytesGet(self.0) as i64,
                sys::TSHttpTxnClientReqBodyBytesGet(self.0),
                sys::TSHttpTxnClientRespHdrBytesGet(self.0) as i64,
                sys::TSHttpTxnClientRespBodyBytesGet(self.0),
            )
        }
    }

    /// When the first byte of the client request arrived, in nanoseconds since the Unix epoch
    /// (ATS's high-resolution clock is CLOCK_REALTIME).
    pub fn started_ns(self) -> Option<i64> {
        let mut t: sys::TSHRTime = 0;
        // SAFETY: live transaction; t is a valid out-param.
        let rc = unsafe { sys::TSHttpTxnMilestoneGet(self.0, sys::TS_MILESTONE_UA_BEGIN, &mut t) };
        (rc == sys::TS_SUCCESS && t > 0).then_some(t)
    }

    /// Whether the response comes from a fresh cache hit.
    pub fn is_cache_hit(self) -> bool {
        let mut status: std::ffi::c_int = -1;
        // SAFETY: live transaction; status is a valid out-param.
        let rc = unsafe { sys::TSHttpTxnCacheLookupStatusGet(self.0, &mut status) };
        rc == sys::TS_SUCCESS && status == sys::TS_CACHE_LOOKUP_HIT_FRESH as std::ffi::c_int
    }

    /// The origin response's status, when there is an origin response (0 when it had none
    /// that parsed).
    pub fn server_response_status(self) -> Option<u16> {
        // SAFETY: live transaction; the getter fills the out-params on success.
        unsafe { HeaderMap::from_getter(|b, l| sys::TSHttpTxnServerRespGet(self.0, b, l)) }.map(|h| h.status())
    }

    /// Whether an origin response exists for this transaction.
    pub fn has_server_response(self) -> bool {
        // SAFETY: live transaction; the getter fills the out-params on success.
        unsafe { HeaderMap::from_getter(|b, l| sys::TSHttpTxnServerRespGet(self.0, b, l)) }.is_some()
    }

    /// The client connection's protocol stack tags, e.g. `["ipv4", "tcp", "tls/1.3", "h2"]`.
    pub fn client_protocol_stack(self) -> Vec<String> {
        let mut tags: [*const std::ffi::c_char; 10] = [std::ptr::null(); 10];
        let mut n: std::ffi::c_int = 0;
        // SAFETY: live transaction; the array holds 10 entries; the tags are static strings.
        unsafe {
            if sys::TSHttpSsnClientProtocolStackGet(sys::TSHttpTxnSsnGet(self.0), 10, tags.as_mut_ptr(), &mut n)
                != sys::TS_SUCCESS
            {
                return Vec::new();
            }
            tags[..n.clamp(0, 10) as usize]
                .iter()
                .filter(|p| !p.is_null())
                .map(|p| std::ffi::CStr::from_ptr(*p).to_string_lossy().into_owned())
                .collect()
        }
    }

    /// Whether the client presented a certificate in the TLS handshake of this transaction's
    /// connection: `None` for a connection that is not TLS, or when the OpenSSL that ATS runs
    /// with cannot be asked (it lacks `SSL_get0_peer_certificate`, i.e. is older than 3.0).
    ///
    /// ATS only asks clients for certificates when configured to
    /// (`proxy.config.ssl.client.certification_level` or `verify_client` in `sni.yaml`).
    /// `TSVConnProvidedSslCert` cannot answer this: for inbound connections it reports on
    /// ATS's own certificate.
    pub fn tls_client_cert_presented(self) -> Option<bool> {
        // SAFETY: live transaction; the client vconn lives as long as its session, and its
        // SSL object as long as the vconn. SSL_get0_peer_certificate only reads the SSL object
        // and returns a borrowed pointer that is not kept.
        unsafe {
            let vc = sys::TSHttpSsnClientVConnGet(sys::TSHttpTxnSsnGet(self.0));
            if vc.is_null() || sys::TSVConnIsSsl(vc) == 0 {
                return None;
            }
            let ssl = sys::TSVConnSslConnectionGet(vc);
            let peer_cert = openssl_get0_peer_certificate()?;
            if ssl.is_null() {
                return None;
            }
            Some(!peer_cert(ssl as *const c_void).is_null())
        }
    }

    /// The TLS SNI the client sent, if the client connection is TLS and sent one.
    pub fn tls_sni(self) -> Option<Vec<u8>> {
        // SAFETY: live transaction; the client vconn lives as long as its session. The SNI
        // string is copied out immediately.
        unsafe {
            let vc = sys::TSHttpSsnClientVConnGet(sys::TSHttpTxnSsnGet(self.0));
            if vc.is_null() || sys::TSVConnIsSsl(vc) == 0 {
                return None;
            }
            let mut len: std::ffi::c_int = 0;
            let p = sys::TSVConnSslSniGet(vc, &mut len);
            if p.is_null() || len <= 0 {
                return None;
            }
            Some(std::slice::from_raw_parts(p as *const u8, len as usize).to_vec())
        }
    }

    /// Whether this transaction was started from inside ATS (`TSHttpConnect`, e.g. a fetch of
    /// a plugin — our own HTTP calls among them) rather than by a client.
    pub fn is_internal(self) -> bool {
        // SAFETY: live transaction.
        unsafe { sys::TSHttpTxnIsInternal(self.0) != 0 }
    }

    /// Sends this transaction's request where its (absolute) URL says, without remap and
    /// without the cache (`TSSkipRemappingSet`; `proxy.config.http.cache.http` = 0 for it), on
    /// a shared upstream connection even when it carries `Authorization`
    /// (`proxy.config.http.auth_server_session_private` = 0 for it). Measured on 9.2: with that
    /// privacy on, every such internal transaction left one idle upstream connection bound to
    /// its client session that no later transaction could use, until connections ran out.
    ///
    /// It also ends when its requester leaves: `proxy.config.http.allow_half_open` = 0 for it,
    /// so the close of the fetch's end of the plugin connection aborts the transaction and its
    /// upstream connection, where the default (1) kept both until the upstream answered or
    /// ATS's own timeouts (measured on 9.2: 30 s and more). With `timeout`, the transaction's
    /// active and connect timeouts are set to it (`TSHttpTxnActiveTimeoutSet`,
    /// `TSHttpTxnConnectTimeoutSet`): ATS then ends it by itself too, checked about once a second.
    pub fn set_up_as_plugin_call(self, timeout: Option<std::time::Duration>) {
        // SAFETY: live transaction, before remap (READ_REQUEST_HDR).
        unsafe {
            sys::TSSkipRemappingSet(self.0, 1);
            sys::TSHttpTxnConfigIntSet(self.0, sys::TS_CONFIG_HTTP_CACHE_HTTP, 0);
            sys::TSHttpTxnConfigIntSet(self.0, sys::TS_CONFIG_HTTP_AUTH_SERVER_SESSION_PRIVATE, 0);
            sys::TSHttpTxnConfigIntSet(self.0, sys::TS_CONFIG_HTTP_ALLOW_HALF_OPEN, 0);
            if let Some(t) = timeout {
                let ms = t.as_millis().clamp(1, i32::MAX as u128) as c_int;
                sys::TSHttpTxnActiveTimeoutSet(self.0, ms);
                sys::TSHttpTxnConnectTimeoutSet(self.0, ms);
            }
        }
    }

    /// The local address of the transaction's upstream connection (`TSHttpTxnOutgoingAddrGet`;
    /// from `SEND_REQUEST_HDR` on).
    pub fn outgoing_addr(self) -> Option<std::net::SocketAddr> {
        // SAFETY: live transaction; ATS returns null or a valid sockaddr.
        unsafe { super::net::to_socket_addr(sys::TSHttpTxnOutgoingAddrGet(self.0) as *const libc::sockaddr) }
    }

    pub(crate) fn raw(self) -> sys::TSHttpTxn {
        self.0
    }
}

/// A transaction user-argument slot holding a `T` per transaction (boxed, in a `RefCell`).
///
/// All access goes through this type, so the slot only ever holds a value put there by
/// [`TxnSlot::put`]; [`TxnSlot::take`] hands ownership back exactly once, and
/// [`TxnSlot::with`] lends it in place (one read of the slot, no write).
pub struct TxnSlot<T> {
    idx: i32,
    _t: std::marker::PhantomData<fn() -> T>,
}

impl<T: 'static> TxnSlot<T> {
    /// Reserves a slot named `name` (`TSUserArgIndexReserve`); `None` if ATS has none left.
    pub fn reserve(name: &str, description: &str) -> Option<Self> {
        super::plugin::reserve_txn_arg(name, description).map(|idx| TxnSlot { idx, _t: std::marker::PhantomData })
    }

    /// Stores `value` for `txn` and returns what was there before. If the slot's value is
    /// lent out by [`TxnSlot::with`] further up this stack, nothing changes and `value` comes
    /// back.
    pub fn put(&self, txn: Txn, value: T) -> Option<T> {
        check_direct_args(txn, self.idx);
        let old = self.take(txn);
        if !txn.user_arg(self.idx).is_null() {
            return Some(value);
        }
        txn.set_user_arg(self.idx, Box::into_raw(Box::new(RefCell::new(value))) as *mut c_void);
        old
    }

    /// Takes the value stored for `txn`, leaving the slot empty. `None` when there is none,
    /// or when it is lent out by [`TxnSlot::with`] further up this stack.
    pub fn take(&self, txn: Txn) -> Option<T> {
        let p = txn.user_arg(self.idx) as *mut RefCell<T>;
        if p.is_null() {
            return None;
        }
        // SAFETY: non-null values in this slot only come from Box::into_raw in `put` (type
        // invariant) and stay valid until `take` frees them below.
        if unsafe { (*p).try_borrow_mut() }.is_err() {
            return None;
        }
        txn.set_user_arg(self.idx, std::ptr::null_mut());
        // SAFETY: as above; the value is not borrowed (checked above) and the slot is cleared
        // before returning, so ownership moves back once.
        Some(unsafe { Box::from_raw(p) }.into_inner())
    }

    /// Runs `f` on the value stored for `txn` in place; `None` when there is none (or it is
    /// already lent out further up this stack). While `f` runs, [`TxnSlot::take`] and
    /// [`TxnSlot::put`] for the same transaction leave the value alone.
    pub fn with<R>(&self, txn: Txn, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        let p = txn.user_arg(self.idx) as *const RefCell<T>;
        if p.is_null() {
            return None;
        }
        // SAFETY: non-null values only come from `put` (type invariant); `take` does not free
        // a value while this borrow holds it, so the reference stays valid during `f`.
        let cell = unsafe { &*p };
        let mut value = cell.try_borrow_mut().ok()?;
        Some(f(&mut value))
    }
}

/// ATS 9.2's `TSHttpTxnArgGet` / `TSHttpTxnArgSet`: they reach the same per-transaction array
/// as `TSUserArgGet` / `TSUserArgSet` with a `TS_USER_ARGS_TXN` index, but without the
/// `dynamic_cast` those run on every call (~500 instructions each, measured with callgrind; a
/// cached request made 6 of them). They are deprecated and gone in ATS 10, so they are looked up
/// at run time, and used only once [`check_direct_args`] has seen, on a live transaction, that
/// both paths reach the same slot.
struct DirectArgs {
    get: unsafe extern "C" fn(sys::TSHttpTxn, std::ffi::c_int) -> *mut c_void,
    set: unsafe extern "C" fn(sys::TSHttpTxn, std::ffi::c_int, *mut c_void),
}

/// Not checked yet / checked and usable / unavailable or not equivalent.
const ARGS_UNCHECKED: u8 = 0;
const ARGS_DIRECT: u8 = 1;
const ARGS_GENERIC: u8 = 2;
static ARGS_MODE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(ARGS_UNCHECKED);

fn direct_arg_fns() -> Option<&'static DirectArgs> {
    static FNS: std::sync::OnceLock<Option<DirectArgs>> = std::sync::OnceLock::new();
    FNS.get_or_init(|| {
        // SAFETY: dlsym with RTLD_DEFAULT and NUL-terminated names only looks the symbols up.
        let (get, set) = unsafe {
            (
                libc::dlsym(libc::RTLD_DEFAULT, c"TSHttpTxnArgGet".as_ptr()),
                libc::dlsym(libc::RTLD_DEFAULT, c"TSHttpTxnArgSet".as_ptr()),
            )
        };
        if get.is_null() || set.is_null() {
            return None;
        }
        // SAFETY: the addresses of ATS's functions with the C signatures
        // `void *TSHttpTxnArgGet(TSHttpTxn, int)` and `void TSHttpTxnArgSet(TSHttpTxn, int, void *)`.
        Some(unsafe {
            DirectArgs {
                get: std::mem::transmute::<
                    *mut c_void,
                    unsafe extern "C" fn(sys::TSHttpTxn, std::ffi::c_int) -> *mut c_void,
                >(get),
                set: std::mem::transmute::<
                    *mut c_void,
                    unsafe extern "C" fn(sys::TSHttpTxn, std::ffi::c_int, *mut c_void),
                >(set),
            }
        })
    })
    .as_ref()
}

/// The direct accessors, once checked; `None` means the generic `TSUserArg*` calls.
fn direct_args() -> Option<&'static DirectArgs> {
    if ARGS_MODE.load(std::sync::atomic::Ordering::Relaxed) == ARGS_DIRECT { direct_arg_fns() } else { None }
}

/// Once per process, on the first live transaction: writes slot `idx` with the direct setter and
/// reads it back with `TSUserArgGet`; the direct accessors are used from then on only if that
/// gave the same value. The slot must be empty (it is left empty).
fn check_direct_args(txn: Txn, idx: i32) {
    use std::sync::atomic::Ordering;
    if ARGS_MODE.load(Ordering::Relaxed) != ARGS_UNCHECKED {
        return;
    }
    let mode = match direct_arg_fns() {
        Some(d) => {
            let probe = &ARGS_MODE as *const _ as *mut c_void;
            // SAFETY: live transaction and reserved index; the slot is empty before and after
            // (callers only check on a slot they are about to fill), and the probe pointer is
            // never dereferenced.
            unsafe {
                let before = sys::TSUserArgGet(txn.0 as *mut c_void, idx);
                if !before.is_null() {
                    return;
                }
                (d.set)(txn.0, idx, probe);
                let seen = sys::TSUserArgGet(txn.0 as *mut c_void, idx);
                sys::TSUserArgSet(txn.0 as *mut c_void, idx, std::ptr::null_mut());
                let back = (d.get)(txn.0, idx);
                if seen == probe && back.is_null() { ARGS_DIRECT } else { ARGS_GENERIC }
            }
        }
        None => ARGS_GENERIC,
    };
    ARGS_MODE.store(mode, Ordering::Relaxed);
    super::log::debug(if mode == ARGS_DIRECT {
        b"transaction slots: TSHttpTxnArgGet/Set"
    } else {
        b"transaction slots: TSUserArgGet/Set"
    });
}

/// `SSL_get0_peer_certificate` of the OpenSSL (3.0 or later) that traffic_server runs with,
/// looked up once at run time: the plugin does not link OpenSSL itself, and must keep loading
/// when ATS runs with an OpenSSL that lacks the function.
fn openssl_get0_peer_certificate() -> Option<unsafe extern "C" fn(*const c_void) -> *const c_void> {
    static FUNCTION: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let addr = *FUNCTION.get_or_init(|| {
        // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only looks the symbol up.
        unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"SSL_get0_peer_certificate".as_ptr()) as usize }
    });
    // SAFETY: a non-null address of SSL_get0_peer_certificate, whose C signature is
    // `X509 *SSL_get0_peer_certificate(const SSL *)`.
    (addr != 0)
        .then(|| unsafe { std::mem::transmute::<usize, unsafe extern "C" fn(*const c_void) -> *const c_void>(addr) })
}
