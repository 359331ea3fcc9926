//! MIME header maps inside ATS message buffers.

use std::ffi::c_int;

use super::sys;

/// Header names ATS keeps as well-known strings (`TS_MIME_FIELD_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WellKnownName {
    /// `Content-Length`.
    ContentLength,
    /// `Transfer-Encoding`.
    TransferEncoding,
}

impl WellKnownName {
    fn ats_string(self) -> (*const std::ffi::c_char, c_int) {
        // SAFETY: ATS sets these exported constants before it loads plugins and never changes
        // them; they are read by value.
        unsafe {
            match self {
                Self::ContentLength => (sys::TS_MIME_FIELD_CONTENT_LENGTH, sys::TS_MIME_LEN_CONTENT_LENGTH),
                Self::TransferEncoding => (sys::TS_MIME_FIELD_TRANSFER_ENCODING, sys::TS_MIME_LEN_TRANSFER_ENCODING),
            }
        }
    }
}

/// An HTTP header (request or response) in an ATS message buffer. Releases its handle on drop.
pub struct HeaderMap {
    buf: sys::TSMBuffer,
    loc: sys::TSMLoc,
}

const NULL_MLOC: sys::TSMLoc = std::ptr::null_mut();

fn clen(s: &[u8]) -> c_int {
    s.len().min(c_int::MAX as usize) as c_int
}

/// Copies `len` bytes at `ptr` (an ATS-owned string) into a slice valid for the caller's use.
///
/// # Safety
/// `ptr` must point to `len` readable bytes that stay valid and unchanged while the slice lives.
unsafe fn bytes<'a>(ptr: *const std::ffi::c_char, len: c_int) -> &'a [u8] {
    if ptr.is_null() || len <= 0 {
        &[]
    } else {
        // SAFETY: guaranteed by the caller.
        unsafe { std::slice::from_raw_parts(ptr as *const u8, len as usize) }
    }
}

impl HeaderMap {
    /// Wraps the buffer and location a `TS*Get(txn, &buf, &loc)` getter fills.
    ///
    /// # Safety
    /// `get` must be such a getter on a live transaction.
    pub(crate) unsafe fn from_getter(
        get: impl FnOnce(*mut sys::TSMBuffer, *mut sys::TSMLoc) -> sys::TSReturnCode,
    ) -> Option<Self> {
        let mut buf: sys::TSMBuffer = std::ptr::null_mut();
        let mut loc: sys::TSMLoc = std::ptr::null_mut();
        if get(&mut buf, &mut loc) != sys::TS_SUCCESS || buf.is_null() {
            return None;
        }
        Some(HeaderMap { buf, loc })
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        // SAFETY: buf/loc come from a successful getter (type invariant).
        unsafe { sys::TSMimeHdrFieldsCount(self.buf, self.loc).max(0) as usize }
    }

    /// Whether there is no field.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn find(&self, name: &[u8]) -> sys::TSMLoc {
        // SAFETY: type invariant; name is valid for name.len() bytes.
        unsafe { sys::TSMimeHdrFieldFind(self.buf, self.loc, name.as_ptr() as *const _, clen(name)) }
    }

    /// Calls `f` with the value of each field named `name` (duplicates one by one, in order),
    /// without copying; whether the field exists. ATS finds a well-known name by its presence
    /// bits instead of tokenizing a string.
    pub fn for_each_well_known_value(&self, name: WellKnownName, f: impl FnMut(&[u8])) -> bool {
        let (p, len) = name.ats_string();
        // SAFETY: type invariant; p is ATS's own well-known string of len bytes.
        let field = unsafe { sys::TSMimeHdrFieldFind(self.buf, self.loc, p, len) };
        self.for_each_dup(field, f)
    }

    fn release(&self, field: sys::TSMLoc) {
        // SAFETY: field is a handle obtained from this header.
        unsafe {
            sys::TSHandleMLocRelease(self.buf, self.loc, field);
        }
    }

    fn value_of(&self, field: sys::TSMLoc) -> &[u8] {
        let mut len: c_int = 0;
        // SAFETY: field belongs to this header; idx -1 asks for the whole value (not one
        // comma-separated element). The bytes stay valid until the header is modified, which
        // cannot happen while &self is borrowed by the returned slice.
        unsafe { bytes(sys::TSMimeHdrFieldValueStringGet(self.buf, self.loc, field, -1, &mut len), len) }
    }

    /// Appends the value of `name` to `out`, all fields of that name joined with `", "`.
    /// Returns whether the field exists.
    pub fn get(&self, name: &[u8], out: &mut Vec<u8>) -> bool {
        self.collect_values(self.find(name), out)
    }

    /// Appends the values of `field` and its duplicates to `out`, joined with `", "`.
    fn collect_values(&self, field: sys::TSMLoc, out: &mut Vec<u8>) -> bool {
        let mut first = true;
        self.for_each_dup(field, |v| {
            if !std::mem::take(&mut first) {
                out.extend_from_slice(b", ");
            }
            out.extend_from_slice(v);
        })
    }

    /// Calls `f` with the value of `field` and of each of its duplicates, releasing each
    /// handle; whether `field` exists (is not null).
    fn for_each_dup(&self, mut field: sys::TSMLoc, mut f: impl FnMut(&[u8])) -> bool {
        let found = !field.is_null();
        while !field.is_null() {
            f(self.value_of(field));
            // SAFETY: field belongs to this header.
            let next = unsafe { sys::TSMimeHdrFieldNextDup(self.buf, self.loc, field) };
            self.release(field);
            field = next;
        }
        found
    }

    /// Calls `f(name, value)` for every field in order.
    pub fn for_each(&self, f: &mut dyn FnMut(&[u8], &[u8])) {
        // SAFETY: type invariant.
        let mut field = unsafe { sys::TSMimeHdrFieldGet(self.buf, self.loc, 0) };
        while !field.is_null() {
            let mut nlen: c_int = 0;
            // SAFETY: field belongs to this header; the name is valid until modification.
            let name = unsafe { bytes(sys::TSMimeHdrFieldNameGet(self.buf, self.loc, field, &mut nlen), nlen) };
            f(name, self.value_of(field));
            // SAFETY: as above.
            let next = unsafe { sys::TSMimeHdrFieldNext(self.buf, self.loc, field) };
            self.release(field);
            field = next;
        }
    }

    /// Appends a new field `name: value`. Returns false if ATS refused it.
    pub fn add(&self, name: &[u8], value: &[u8]) -> bool {
        let mut field: sys::TSMLoc = NULL_MLOC;
        // SAFETY: type invariant; name/value valid for their lengths; field released below.
        unsafe {
            if sys::TSMimeHdrFieldCreateNamed(self.buf, self.loc, name.as_ptr() as *const _, clen(name), &mut field)
                != sys::TS_SUCCESS
            {
                return false;
            }
            let ok = sys::TSMimeHdrFieldValueStringSet(
                self.buf,
                self.loc,
                field,
                -1,
                value.as_ptr() as *const _,
                clen(value),
            ) == sys::TS_SUCCESS
                && sys::TSMimeHdrFieldAppend(self.buf, self.loc, field) == sys::TS_SUCCESS;
            if !ok {
                sys::TSMimeHdrFieldDestroy(self.buf, self.loc, field);
            }
            self.release(field);
            ok
        }
    }

    /// Makes `name` one field with `value`: the first field of that name gets the value and
    /// its duplicates are removed; when there is none, the field is added.
    pub fn replace(&self, name: &[u8], value: &[u8]) -> bool {
        let field = self.find(name);
        if field.is_null() {
            return self.add(name, value);
        }
        // SAFETY: field belongs to this header; value valid for its length.
        let ok = unsafe {
            sys::TSMimeHdrFieldValueStringSet(self.buf, self.loc, field, -1, value.as_ptr() as *const _, clen(value))
                == sys::TS_SUCCESS
        };
        loop {
            // SAFETY: as above.
            let dup = unsafe { sys::TSMimeHdrFieldNextDup(self.buf, self.loc, field) };
            if dup.is_null() {
                break;
            }
            // SAFETY: dup belongs to this header; destroyed then released.
            unsafe {
                sys::TSMimeHdrFieldDestroy(self.buf, self.loc, dup);
            }
            self.release(dup);
        }
        self.release(field);
        ok
    }

    /// Removes every field named `name`.
    pub fn remove(&self, name: &[u8]) {
        loop {
            let field = self.find(name);
            if field.is_null() {
                return;
            }
            // SAFETY: field belongs to this header; destroyed then released.
            unsafe {
                sys::TSMimeHdrFieldDestroy(self.buf, self.loc, field);
            }
            self.release(field);
        }
    }

    /// Removes every field.
    pub fn clear(&self) {
        loop {
            // SAFETY: type invariant.
            let field = unsafe { sys::TSMimeHdrFieldGet(self.buf, self.loc, 0) };
            if field.is_null() {
                return;
            }
            // SAFETY: field belongs to this header; destroyed then released.
            unsafe {
                sys::TSMimeHdrFieldDestroy(self.buf, self.loc, field);
            }
            self.release(field);
        }
    }

    /// The request method (request headers only).
    pub fn method(&self) -> Vec<u8> {
        let mut len: c_int = 0;
        // SAFETY: type invariant; copied out immediately.
        unsafe { bytes(sys::TSHttpHdrMethodGet(self.buf, self.loc, &mut len), len).to_vec() }
    }

    /// Calls `f` with this request's URL handle (request headers only); `None` if it has none.
    fn with_url<R>(&self, f: impl FnOnce(sys::TSMLoc) -> R) -> Option<R> {
        let mut url: sys::TSMLoc = NULL_MLOC;
        // SAFETY: type invariant; url is released below.
        if unsafe { sys::TSHttpHdrUrlGet(self.buf, self.loc, &mut url) } != sys::TS_SUCCESS || url.is_null() {
            return None;
        }
        let r = f(url);
        self.release(url);
        Some(r)
    }

    /// The request URL's parts, copied out: `(scheme, host, port, path, query)`. The path has
    /// no leading `/` (ATS's convention); the port is the explicit or default one.
    pub fn url_parts(&self) -> Option<UrlParts> {
        // SAFETY: the URL handle belongs to this header's buffer.
        self.with_url(|url| unsafe { UrlParts::read(self.buf, url) })
    }

    /// Sets the request method.
    pub fn set_method(&self, method: &[u8]) -> bool {
        // SAFETY: type invariant; ATS copies the bytes.
        unsafe {
            sys::TSHttpHdrMethodSet(self.buf, self.loc, method.as_ptr() as *const _, clen(method)) == sys::TS_SUCCESS
        }
    }

    /// Sets the request URL's path and query from `path` as a client writes it (`/a/b?x=1`).
    pub fn set_path_and_query(&self, path: &[u8]) -> bool {
        let (p, q) = match path.iter().position(|&b| b == b'?') {
            Some(i) => (&path[..i], &path[i + 1..]),
            None => (path, &b""[..]),
        };
        let p = p.strip_prefix(b"/").unwrap_or(p);
        self.with_url(|url| {
            // SAFETY: url belongs to this header; ATS copies the bytes.
            unsafe {
                sys::TSUrlPathSet(self.buf, url, p.as_ptr() as *const _, clen(p)) == sys::TS_SUCCESS
                    && sys::TSUrlHttpQuerySet(self.buf, url, q.as_ptr() as *const _, clen(q)) == sys::TS_SUCCESS
            }
        })
        .unwrap_or(false)
    }

    /// Sets the response status and its standard reason phrase (response headers only).
    pub fn set_status(&self, status: u16) -> bool {
        // SAFETY: type invariant; the reason is a static string from ATS (or null).
        unsafe {
            if sys::TSHttpHdrStatusSet(self.buf, self.loc, status as sys::TSHttpStatus) != sys::TS_SUCCESS {
                return false;
            }
            let reason = sys::TSHttpHdrReasonLookup(status as sys::TSHttpStatus);
            if !reason.is_null() {
                let r = std::ffi::CStr::from_ptr(reason).to_bytes();
                sys::TSHttpHdrReasonSet(self.buf, self.loc, r.as_ptr() as *const _, clen(r));
            }
            true
        }
    }

    /// The HTTP version as `(major, minor)`.
    pub fn version(&self) -> (u8, u8) {
        // SAFETY: type invariant.
        let v = unsafe { sys::TSHttpHdrVersionGet(self.buf, self.loc) };
        (((v >> 16) & 0xff) as u8, (v & 0xff) as u8)
    }

    /// The response status (response headers only).
    pub fn status(&self) -> u16 {
        // SAFETY: type invariant.
        unsafe { sys::TSHttpHdrStatusGet(self.buf, self.loc) as u16 }
    }
}

/// A request URL's parts, copied out of the message buffer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UrlParts {
    /// `http`, `https`, or empty when the request line had no scheme.
    pub scheme: Vec<u8>,
    /// The host, or empty.
    pub host: Vec<u8>,
    /// The port (explicit or the scheme's default).
    pub port: u16,
    /// The port as written in the URL, or 0 when none was.
    pub explicit_port: u16,
    /// The path without its leading `/`.
    pub path: Vec<u8>,
    /// The query without `?`.
    pub query: Vec<u8>,
}

impl UrlParts {
    /// Copies the parts of the URL at `url` in `buf`.
    ///
    /// # Safety
    /// `url` must be a live URL handle in `buf`.
    pub(crate) unsafe fn read(buf: sys::TSMBuffer, url: sys::TSMLoc) -> Self {
        let get = |g: unsafe extern "C" fn(sys::TSMBuffer, sys::TSMLoc, *mut c_int) -> *const std::ffi::c_char| {
            let mut len: c_int = 0;
            // SAFETY: url is live in buf (caller); the bytes are copied out immediately.
            unsafe { bytes(g(buf, url, &mut len), len).to_vec() }
        };
        UrlParts {
            scheme: get(sys::TSUrlSchemeGet),
            host: get(sys::TSUrlHostGet),
            // SAFETY: as above.
            port: unsafe { sys::TSUrlPortGet(buf, url) }.clamp(0, 65535) as u16,
            // SAFETY: as above.
            explicit_port: unsafe { sys::TSUrlRawPortGet(buf, url) }.clamp(0, 65535) as u16,
            path: get(sys::TSUrlPathGet),
            query: get(sys::TSUrlHttpQueryGet),
        }
    }
}

impl Drop for HeaderMap {
    fn drop(&mut self) {
        // SAFETY: the root handle from the getter is released exactly once, with a null parent.
        unsafe {
            sys::TSHandleMLocRelease(self.buf, NULL_MLOC, self.loc);
        }
    }
}
