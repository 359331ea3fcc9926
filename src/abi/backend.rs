//! What the ABI host needs from the proxy it runs in.
//!
//! The ATS plugin implements [`Backend`] over real transactions; [`super::testing`] implements
//! it in memory so the host can be tested with real guest modules and no ATS.

use super::types::{HostResult, LogLevel, MapType};

/// The proxy side of the ABI: logging and the HTTP data of streams.
///
/// `Stream` names one HTTP stream (in ATS: a transaction and the phase it is in). The host
/// passes the stream of the effective context to each call; calls about a map the stream does
/// not have right now answer `NOT_FOUND` (reads) or `BAD_ARGUMENT` (writes), as Envoy does.
pub trait Backend: Send + 'static {
    /// A handle on one HTTP stream; cheap to copy.
    type Stream: Copy + Send + 'static;

    /// Writes a guest log line (`filter` is the configured filter name).
    fn log(&mut self, filter: &str, level: LogLevel, msg: &[u8]);

    /// The lowest level that [`Backend::log`] does not discard.
    fn log_level(&self) -> LogLevel;

    /// Appends the value of `key` in `map` to `out`; `Ok(false)` when the key is absent.
    /// Several fields of the same name are joined with `", "` (RFC 9110, 5.3).
    fn map_get(&mut self, s: Self::Stream, map: MapType, key: &[u8], out: &mut Vec<u8>) -> HostResult<bool>;

    /// Calls `f` with every field of `map`, in order (pseudo-headers first).
    fn map_for_each(&mut self, s: Self::Stream, map: MapType, f: &mut dyn FnMut(&[u8], &[u8])) -> HostResult;

    /// Adds a field (keeps existing fields of the same name).
    fn map_add(&mut self, s: Self::Stream, map: MapType, key: &[u8], value: &[u8]) -> HostResult;

    /// Sets `key` to exactly one field with `value`, adding it when missing.
    fn map_replace(&mut self, s: Self::Stream, map: MapType, key: &[u8], value: &[u8]) -> HostResult;

    /// Removes every field named `key`; OK when there is none.
    fn map_remove(&mut self, s: Self::Stream, map: MapType, key: &[u8]) -> HostResult;

    /// Replaces the whole map with `pairs` (fields absent from `pairs` are removed).
    fn map_set_pairs(&mut self, s: Self::Stream, map: MapType, pairs: &[(&[u8], &[u8])]) -> HostResult;
}
