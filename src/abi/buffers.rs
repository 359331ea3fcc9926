//! Buffer arithmetic of `proxy_get_buffer_bytes` and `proxy_set_buffer_bytes`, shared by the
//! host and by backends that keep buffers in memory.

#![forbid(unsafe_code)]

use super::types::{HostResult, Status};

/// The range `proxy_get_buffer_bytes(start, max_size)` reads from a buffer of `len` bytes:
/// `start` past the end is `BAD_ARGUMENT` (the spec's "buffer overflow due to invalid start");
/// `max_size` is clamped to what is there (SDKs pass `usize::MAX` for "all").
pub fn read_range(len: usize, start: u32, max_size: u32) -> HostResult<std::ops::Range<usize>> {
    let start = start as usize;
    if start > len {
        return Err(Status::BadArgument);
    }
    Ok(start..start.saturating_add(max_size as usize).min(len))
}

/// Applies `proxy_set_buffer_bytes(start, size, value)` to `buf`: `start` at or past the end
/// appends, `start == 0 && size == 0` prepends, otherwise `size` bytes (clamped to the end) at
/// `start` are replaced by `value` (`size == 0` inserts).
pub fn apply_edit(buf: &mut Vec<u8>, start: usize, size: usize, value: &[u8]) {
    if start >= buf.len() {
        buf.extend_from_slice(value);
    } else {
        let end = start.saturating_add(size).min(buf.len());
        buf.splice(start..end, value.iter().copied());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_follow_the_spec() {
        let mut b = b"hello".to_vec();
        apply_edit(&mut b, 0, 0, b">");
        assert_eq!(b, b">hello");
        apply_edit(&mut b, usize::MAX, 7, b"!");
        assert_eq!(b, b">hello!");
        apply_edit(&mut b, 1, 5, b"HI");
        assert_eq!(b, b">HI!");
        apply_edit(&mut b, 1, 100, b"");
        assert_eq!(b, b">");
    }

    #[test]
    fn read_ranges_clamp_and_reject_bad_starts() {
        assert_eq!(read_range(5, 0, u32::MAX), Ok(0..5));
        assert_eq!(read_range(5, 2, 2), Ok(2..4));
        assert_eq!(read_range(5, 5, 1), Ok(5..5));
        assert_eq!(read_range(5, 6, 1), Err(Status::BadArgument));
        assert_eq!(read_range(5, u32::MAX, u32::MAX), Err(Status::BadArgument));
    }
}
