//! The ABI backend over ATS transactions: header maps and logging.

use crate::abi::types::HostResult;
use crate::abi::{Backend, LogLevel, MapType, Status};
use crate::ts::headers::HeaderMap;
use crate::ts::log;
use crate::ts::txn::Txn;

/// Which hook a transaction is in, which decides the maps a guest can reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// `READ_REQUEST_HDR`: the client request is readable and writable.
    Request,
    /// `SEND_RESPONSE_HDR`: the response to the client is readable and writable too.
    Response,
    /// `TXN_CLOSE`: both readable (for `proxy_on_log`).
    Close,
}

/// One transaction in one phase: the ABI's stream handle in ATS.
#[derive(Clone, Copy, Debug)]
pub struct TxnStream {
    /// The transaction.
    pub txn: Txn,
    /// Its phase.
    pub phase: Phase,
}

/// The ATS backend. Stateless: everything lives in the transaction.
#[derive(Default)]
pub struct AtsBackend;

fn header(s: TxnStream, map: MapType, write: bool) -> HostResult<HeaderMap> {
    let unavailable = if write { Status::BadArgument } else { Status::NotFound };
    match map {
        MapType::RequestHeaders => s.txn.client_request().ok_or(unavailable),
        MapType::ResponseHeaders if s.phase != Phase::Request => s.txn.client_response().ok_or(unavailable),
        _ => Err(unavailable),
    }
}

fn valid_name(key: &[u8]) -> HostResult {
    if key.is_empty() || key.iter().any(|&b| b <= b' ' || b == b':' || b >= 0x7f) {
        Err(Status::BadArgument)
    } else {
        Ok(())
    }
}

impl Backend for AtsBackend {
    type Stream = TxnStream;

    fn log(&mut self, filter: &str, level: LogLevel, msg: &[u8]) {
        let mut line = Vec::with_capacity(filter.len() + msg.len() + 16);
        line.extend_from_slice(b"ats_wasm: [");
        line.extend_from_slice(filter.as_bytes());
        line.extend_from_slice(b"] ");
        line.extend_from_slice(msg);
        match level {
            LogLevel::Trace | LogLevel::Debug | LogLevel::Info => log::debug(&line),
            LogLevel::Warn => log::warning(&line),
            LogLevel::Error | LogLevel::Critical => log::error(&line),
        }
    }

    fn log_level(&self) -> LogLevel {
        if log::debug_enabled() { LogLevel::Trace } else { LogLevel::Warn }
    }

    fn map_get(&mut self, s: TxnStream, map: MapType, key: &[u8], out: &mut Vec<u8>) -> HostResult<bool> {
        Ok(header(s, map, false)?.get(key, out))
    }

    fn map_for_each(&mut self, s: TxnStream, map: MapType, f: &mut dyn FnMut(&[u8], &[u8])) -> HostResult {
        header(s, map, false)?.for_each(f);
        Ok(())
    }

    fn map_add(&mut self, s: TxnStream, map: MapType, key: &[u8], value: &[u8]) -> HostResult {
        valid_name(key)?;
        if header(s, map, true)?.add(key, value) { Ok(()) } else { Err(Status::InternalFailure) }
    }

    fn map_replace(&mut self, s: TxnStream, map: MapType, key: &[u8], value: &[u8]) -> HostResult {
        valid_name(key)?;
        if header(s, map, true)?.replace(key, value) { Ok(()) } else { Err(Status::InternalFailure) }
    }

    fn map_remove(&mut self, s: TxnStream, map: MapType, key: &[u8]) -> HostResult {
        header(s, map, true)?.remove(key);
        Ok(())
    }

    fn map_set_pairs(&mut self, s: TxnStream, map: MapType, pairs: &[(&[u8], &[u8])]) -> HostResult {
        for (k, _) in pairs {
            valid_name(k)?;
        }
        let h = header(s, map, true)?;
        h.clear();
        for (k, v) in pairs {
            if !h.add(k, v) {
                return Err(Status::InternalFailure);
            }
        }
        Ok(())
    }
}
