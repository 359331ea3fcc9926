//! Checked access to a guest's linear memory.
//!
//! Every pointer and length a guest passes is untrusted: each accessor checks the whole range
//! against the memory's current size (with overflow-safe arithmetic) and answers
//! [`Status::InvalidMemoryAccess`] instead of reading or writing outside it. Wasm pointers are
//! unsigned 32-bit, so negative `i32`s are reinterpreted, not rejected.

#![forbid(unsafe_code)]

use super::types::{HostResult, Status};

/// The byte range `[ptr, ptr + len)` of a memory of `mem_len` bytes, if it lies inside it.
pub fn range(mem_len: usize, ptr: i32, len: i32) -> HostResult<std::ops::Range<usize>> {
    let start = ptr as u32 as usize;
    let end = start.checked_add(len as u32 as usize).ok_or(Status::InvalidMemoryAccess)?;
    if end > mem_len {
        return Err(Status::InvalidMemoryAccess);
    }
    Ok(start..end)
}

/// The guest bytes at `[ptr, ptr + len)`.
pub fn slice(mem: &[u8], ptr: i32, len: i32) -> HostResult<&[u8]> {
    Ok(&mem[range(mem.len(), ptr, len)?])
}

/// The guest bytes at `[ptr, ptr + len)`, writable.
pub fn slice_mut(mem: &mut [u8], ptr: i32, len: i32) -> HostResult<&mut [u8]> {
    let r = range(mem.len(), ptr, len)?;
    Ok(&mut mem[r])
}

/// Writes a little-endian `u32` at `ptr`.
pub fn write_u32(mem: &mut [u8], ptr: i32, v: u32) -> HostResult {
    slice_mut(mem, ptr, 4)?.copy_from_slice(&v.to_le_bytes());
    Ok(())
}

/// Writes a little-endian `u64` at `ptr`.
pub fn write_u64(mem: &mut [u8], ptr: i32, v: u64) -> HostResult {
    slice_mut(mem, ptr, 8)?.copy_from_slice(&v.to_le_bytes());
    Ok(())
}

/// Reads a little-endian `u32` at `ptr`.
pub fn read_u32(mem: &[u8], ptr: i32) -> HostResult<u32> {
    let b = slice(mem, ptr, 4)?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Checks that `ptr` can hold a `u32` (so a call can fail before it allocates guest memory).
pub fn check_u32(mem_len: usize, ptr: i32) -> HostResult {
    range(mem_len, ptr, 4).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_inside_memory_are_accepted() {
        let mem = [1u8, 2, 3, 4, 5];
        assert_eq!(slice(&mem, 1, 3).unwrap(), &[2, 3, 4]);
        assert_eq!(slice(&mem, 5, 0).unwrap(), &[] as &[u8]);
        assert_eq!(read_u32(&mem, 1).unwrap(), u32::from_le_bytes([2, 3, 4, 5]));
    }

    #[test]
    fn ranges_outside_or_overflowing_are_invalid_memory_access() {
        let mut mem = [0u8; 8];
        assert_eq!(slice(&mem, 6, 4), Err(Status::InvalidMemoryAccess));
        assert_eq!(slice(&mem, 9, 0), Err(Status::InvalidMemoryAccess));
        // -1 is 0xFFFF_FFFF as a wasm pointer: far outside, and ptr + len must not wrap.
        assert_eq!(slice(&mem, -1, 2), Err(Status::InvalidMemoryAccess));
        assert_eq!(slice(&mem, 4, -1), Err(Status::InvalidMemoryAccess));
        assert_eq!(write_u32(&mut mem, 5, 7), Err(Status::InvalidMemoryAccess));
        assert_eq!(write_u64(&mut mem, 1, 7), Err(Status::InvalidMemoryAccess));
        assert!(write_u64(&mut mem, 0, 7).is_ok());
    }
}
