//! An in-memory [`Backend`] for driving real guest modules without ATS (unit tests, benches).

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::time::Duration;

use super::backend::{Backend, HttpCallRequest, LocalResponse, QueueTarget};
use super::buffers::apply_edit;
use super::types::{BufferType, HostResult, LogLevel, MapType, SharedBound, Status, StreamType};

/// The fields of one header map, in order.
pub type Fields = Vec<(Vec<u8>, Vec<u8>)>;

fn owned(pairs: &[(&[u8], &[u8])]) -> Fields {
    pairs.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect()
}

/// A local response a guest sent, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentResponse {
    /// The stream it replaced the response of.
    pub stream: u32,
    /// Status code.
    pub status_code: u32,
    /// Details.
    pub details: Vec<u8>,
    /// Body.
    pub body: Vec<u8>,
    /// Headers.
    pub headers: Fields,
    /// gRPC status.
    pub grpc_status: i32,
}

/// An HTTP call a guest made, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentCall {
    /// The stream of the calling context (`None`: the root context).
    pub stream: Option<u32>,
    /// Token to answer with.
    pub token: u32,
    /// Upstream name.
    pub upstream: Vec<u8>,
    /// Headers.
    pub headers: Fields,
    /// Body.
    pub body: Vec<u8>,
    /// Trailers.
    pub trailers: Fields,
    /// Timeout.
    pub timeout: Duration,
}

/// Header maps, buffers and properties of in-memory streams, and a record of everything guests
/// asked the proxy to do. Pseudo-headers (`:method`, `:path`, `:authority`, `:scheme`,
/// `:status`) are plain fields of the maps.
#[derive(Default, Debug)]
pub struct MemoryBackend {
    /// Maps per `(stream, map)`; a map that is absent is "not available" to the guest.
    pub maps: HashMap<(u32, MapType), Fields>,
    /// Stream buffers (bodies, L4 data) per `(stream, buffer)`; absent is "not available".
    pub buffers: HashMap<(u32, BufferType), Vec<u8>>,
    /// Properties per `(stream, path parts joined with NUL)`; stream `None` holds properties
    /// visible from every context.
    pub properties: HashMap<(Option<u32>, Vec<u8>), Vec<u8>>,
    /// `(filter, level, message)` of every log call.
    pub logs: Vec<(String, LogLevel, String)>,
    /// The level reported by `proxy_get_log_level`.
    pub level: Option<LogLevel>,
    /// Every `proxy_continue_stream` (and 0.1.0 `proxy_continue_request/response`).
    pub continued: Vec<(u32, StreamType)>,
    /// Every `proxy_close_stream`.
    pub closed: Vec<(u32, StreamType)>,
    /// Every local response.
    pub local_responses: Vec<SentResponse>,
    /// Every HTTP call.
    pub http_calls: Vec<SentCall>,
    /// When set, `http_call` answers this error instead of recording the call.
    pub http_call_error: Option<Status>,
    /// Every tick period set.
    pub tick_periods: Vec<Option<Duration>>,
    /// Every shared-queue notification, for the test to deliver.
    pub queue_ready: Vec<QueueTarget>,
    /// Every shared-data or queue write refused by a bound.
    pub shared_refused: Vec<SharedBound>,
}

impl MemoryBackend {
    /// Makes `map` of `stream` available with `pairs`.
    pub fn set_map(&mut self, stream: u32, map: MapType, pairs: &[(&str, &str)]) {
        let v = pairs.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())).collect();
        self.maps.insert((stream, map), v);
    }

    /// The fields of `map` of `stream` as strings.
    pub fn map(&self, stream: u32, map: MapType) -> Vec<(String, String)> {
        self.maps
            .get(&(stream, map))
            .map(|v| {
                v.iter()
                    .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), String::from_utf8_lossy(v).into_owned()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Makes buffer `buffer` of `stream` available with `data`.
    pub fn set_buffer(&mut self, stream: u32, buffer: BufferType, data: &[u8]) {
        self.buffers.insert((stream, buffer), data.to_vec());
    }

    /// Sets property `path` (parts joined with NUL) for `stream` (`None`: every context).
    pub fn set_property_value(&mut self, stream: Option<u32>, path: &str, value: &[u8]) {
        self.properties.insert((stream, path.replace('.', "\0").into_bytes()), value.to_vec());
    }

    /// Log messages at `level` or above that start with `prefix`.
    pub fn logs_with(&self, prefix: &str) -> Vec<&str> {
        self.logs.iter().filter(|(_, _, m)| m.starts_with(prefix)).map(|(_, _, m)| m.as_str()).collect()
    }

    fn get_mut(&mut self, s: u32, map: MapType, write: bool) -> HostResult<&mut Fields> {
        self.maps.get_mut(&(s, map)).ok_or(if write { Status::BadArgument } else { Status::NotFound })
    }
}

fn eq(a: &[u8], b: &[u8]) -> bool {
    a.eq_ignore_ascii_case(b)
}

impl Backend for MemoryBackend {
    type Stream = u32;

    fn log(&mut self, filter: &str, level: LogLevel, msg: &[u8]) {
        self.logs.push((filter.to_string(), level, String::from_utf8_lossy(msg).into_owned()));
    }

    fn log_level(&self) -> LogLevel {
        self.level.unwrap_or(LogLevel::Trace)
    }

    fn map_get(&mut self, s: u32, map: MapType, key: &[u8], out: &mut Vec<u8>) -> HostResult<bool> {
        let mut found = false;
        for (k, v) in self.get_mut(s, map, false)?.iter() {
            if eq(k, key) {
                if found {
                    out.extend_from_slice(b", ");
                }
                out.extend_from_slice(v);
                found = true;
            }
        }
        Ok(found)
    }

    fn map_for_each(&mut self, s: u32, map: MapType, f: &mut dyn FnMut(&[u8], &[u8])) -> HostResult {
        for (k, v) in self.get_mut(s, map, false)?.iter() {
            f(k, v);
        }
        Ok(())
    }

    fn map_add(&mut self, s: u32, map: MapType, key: &[u8], value: &[u8]) -> HostResult {
        self.get_mut(s, map, true)?.push((key.to_vec(), value.to_vec()));
        Ok(())
    }

    fn map_replace(&mut self, s: u32, map: MapType, key: &[u8], value: &[u8]) -> HostResult {
        let m = self.get_mut(s, map, true)?;
        match m.iter().position(|(k, _)| eq(k, key)) {
            Some(i) => {
                m[i].1 = value.to_vec();
                let mut j = i + 1;
                while j < m.len() {
                    if eq(&m[j].0, key) {
                        m.remove(j);
                    } else {
                        j += 1;
                    }
                }
            }
            None => m.push((key.to_vec(), value.to_vec())),
        }
        Ok(())
    }

    fn map_remove(&mut self, s: u32, map: MapType, key: &[u8]) -> HostResult {
        self.get_mut(s, map, true)?.retain(|(k, _)| !eq(k, key));
        Ok(())
    }

    fn map_set_pairs(&mut self, s: u32, map: MapType, pairs: &[(&[u8], &[u8])]) -> HostResult {
        *self.get_mut(s, map, true)? = owned(pairs);
        Ok(())
    }

    fn buffer_size(&mut self, s: u32, buffer: BufferType) -> HostResult<usize> {
        self.buffers.get(&(s, buffer)).map(Vec::len).ok_or(Status::NotFound)
    }

    fn buffer_get(&mut self, s: u32, buffer: BufferType, start: usize, len: usize, out: &mut Vec<u8>) -> HostResult {
        let b = self.buffers.get(&(s, buffer)).ok_or(Status::NotFound)?;
        out.extend_from_slice(b.get(start..start + len).ok_or(Status::BadArgument)?);
        Ok(())
    }

    fn buffer_set(&mut self, s: u32, buffer: BufferType, start: usize, size: usize, value: &[u8]) -> HostResult {
        apply_edit(self.buffers.get_mut(&(s, buffer)).ok_or(Status::NotFound)?, start, size, value);
        Ok(())
    }

    fn continue_stream(&mut self, s: u32, which: StreamType) -> HostResult {
        self.continued.push((s, which));
        Ok(())
    }

    fn close_stream(&mut self, s: u32, which: StreamType) -> HostResult {
        self.closed.push((s, which));
        Ok(())
    }

    fn send_local_response(&mut self, s: u32, r: &LocalResponse<'_>) -> HostResult {
        self.local_responses.push(SentResponse {
            stream: s,
            status_code: r.status_code,
            details: r.details.to_vec(),
            body: r.body.to_vec(),
            headers: owned(r.headers),
            grpc_status: r.grpc_status,
        });
        Ok(())
    }

    fn get_property(&mut self, s: Option<u32>, path: &[&[u8]], out: &mut Vec<u8>) -> HostResult {
        let key = path.join(&0u8);
        let v = s
            .and_then(|s| self.properties.get(&(Some(s), key.clone())))
            .or_else(|| self.properties.get(&(None, key)))
            .ok_or(Status::NotFound)?;
        out.extend_from_slice(v);
        Ok(())
    }

    fn set_property(&mut self, s: Option<u32>, path: &[&[u8]], value: &[u8]) -> HostResult {
        self.properties.insert((s, path.join(&0u8)), value.to_vec());
        Ok(())
    }

    fn set_tick_period(&mut self, period: Option<Duration>) -> HostResult {
        self.tick_periods.push(period);
        Ok(())
    }

    fn http_call(&mut self, s: Option<u32>, req: &HttpCallRequest<'_>) -> HostResult {
        if let Some(e) = self.http_call_error {
            return Err(e);
        }
        self.http_calls.push(SentCall {
            stream: s,
            token: req.token,
            upstream: req.upstream.to_vec(),
            headers: owned(req.headers),
            body: req.body.to_vec(),
            trailers: owned(req.trailers),
            timeout: req.timeout,
        });
        Ok(())
    }

    fn queue_ready(&mut self, target: QueueTarget) {
        self.queue_ready.push(target);
    }

    fn shared_refused(&mut self, bound: SharedBound) {
        self.shared_refused.push(bound);
    }

    fn thread_info(&mut self, out: &mut Vec<u8>) -> HostResult {
        out.extend_from_slice(b"thread=memory-backend pool_size=1");
        Ok(())
    }

    fn foreign_function(&mut self, _s: Option<u32>, name: &[u8], args: &[u8], out: &mut Vec<u8>) -> HostResult {
        match name {
            b"echo" => {
                out.extend_from_slice(args);
                Ok(())
            }
            _ => Err(Status::NotFound),
        }
    }
}
