//! An in-memory [`Backend`] for driving real guest modules without ATS (unit tests, benches).

use std::collections::HashMap;

use super::backend::Backend;
use super::types::{HostResult, LogLevel, MapType, Status};

/// The fields of one header map, in order.
pub type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// Header maps of in-memory streams, and every log line guests wrote.
#[derive(Default, Debug)]
pub struct MemoryBackend {
    /// Maps per `(stream, map)`; a map that is absent is "not available" to the guest.
    pub maps: HashMap<(u32, MapType), Fields>,
    /// `(filter, level, message)` of every log call.
    pub logs: Vec<(String, LogLevel, String)>,
    /// The level reported by `proxy_get_log_level`.
    pub level: Option<LogLevel>,
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
        *self.get_mut(s, map, true)? = pairs.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
        Ok(())
    }
}
