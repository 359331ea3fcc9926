//! The spec's serialization of header maps ("Serialization" section): a `u32` count, then a
//! `u32` key length and value length per pair, then each key and value followed by a NUL.
//! All integers little-endian. An empty map is either zero bytes or a single zero count.

#![forbid(unsafe_code)]

use super::types::{HostResult, Status};

/// Serializes `pairs` into `out` (cleared first).
pub fn encode_pairs<'a>(pairs: impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone, out: &mut Vec<u8>) {
    out.clear();
    let n = pairs.clone().count();
    out.extend_from_slice(&(n as u32).to_le_bytes());
    for (k, v) in pairs.clone() {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
}

/// Decodes a serialized map. Malformed input (truncated, lengths past the end, missing NUL
/// terminators, trailing bytes) is `BAD_ARGUMENT`; it never panics.
pub fn decode_pairs(data: &[u8]) -> HostResult<Vec<(&[u8], &[u8])>> {
    if data.is_empty() || data == [0] {
        return Ok(Vec::new());
    }
    let rd = |at: usize| -> HostResult<usize> {
        let b = data.get(at..at + 4).ok_or(Status::BadArgument)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let n = rd(0)?;
    // Each pair needs at least 8 bytes of sizes and 2 NULs: bound `n` before allocating.
    if n > data.len() / 10 {
        return Err(Status::BadArgument);
    }
    let mut sizes = Vec::with_capacity(n);
    for i in 0..n {
        sizes.push((rd(4 + i * 8)?, rd(8 + i * 8)?));
    }
    let mut at = 4 + n * 8;
    let mut take = |len: usize| -> HostResult<&[u8]> {
        let end = at.checked_add(len).ok_or(Status::BadArgument)?;
        let s = data.get(at..end).ok_or(Status::BadArgument)?;
        if data.get(end) != Some(&0) {
            return Err(Status::BadArgument);
        }
        at = end + 1;
        Ok(s)
    };
    let mut pairs = Vec::with_capacity(n);
    for (kl, vl) in sizes {
        let k = take(kl)?;
        let v = take(vl)?;
        pairs.push((k, v));
    }
    if at != data.len() {
        return Err(Status::BadArgument);
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_example_round_trips() {
        // The spec's example: {{"a": "1"}, {"b": "22"}}.
        let pairs: Vec<(&[u8], &[u8])> = vec![(b"a", b"1"), (b"b", b"22")];
        let mut out = Vec::new();
        encode_pairs(pairs.iter().copied(), &mut out);
        let mut want = Vec::new();
        for n in [2u32, 1, 1, 1, 2] {
            want.extend_from_slice(&n.to_le_bytes());
        }
        want.extend_from_slice(b"a\x001\x00b\x0022\x00");
        assert_eq!(out, want);
        assert_eq!(decode_pairs(&out).unwrap(), pairs);
    }

    #[test]
    fn empty_maps_decode_in_both_forms() {
        assert!(decode_pairs(&[]).unwrap().is_empty());
        assert!(decode_pairs(&[0]).unwrap().is_empty());
        assert!(decode_pairs(&[0, 0, 0, 0]).unwrap().is_empty());
    }

    #[test]
    fn malformed_maps_are_bad_argument() {
        let mut good = Vec::new();
        encode_pairs([(&b"k"[..], &b"v"[..])].into_iter(), &mut good);
        // Truncated anywhere.
        for cut in 1..good.len() {
            assert_eq!(decode_pairs(&good[..cut]), Err(Status::BadArgument), "cut {cut}");
        }
        // Missing NUL terminator.
        let mut bad = good.clone();
        *bad.last_mut().unwrap() = b'x';
        assert_eq!(decode_pairs(&bad), Err(Status::BadArgument));
        // Trailing garbage.
        let mut bad = good.clone();
        bad.push(7);
        assert_eq!(decode_pairs(&bad), Err(Status::BadArgument));
        // A huge count or length must not allocate or overflow.
        let mut bad = vec![0xff, 0xff, 0xff, 0xff];
        bad.extend_from_slice(&[0; 16]);
        assert_eq!(decode_pairs(&bad), Err(Status::BadArgument));
        let mut bad = 1u32.to_le_bytes().to_vec();
        bad.extend_from_slice(&u32::MAX.to_le_bytes());
        bad.extend_from_slice(&0u32.to_le_bytes());
        bad.extend_from_slice(b"\0\0");
        assert_eq!(decode_pairs(&bad), Err(Status::BadArgument));
    }

    /// A deterministic miniature of the `fuzz/` target that runs in every `cargo test`:
    /// mutated valid maps and random bytes never panic, and what decodes re-encodes exactly.
    #[test]
    fn random_and_mutated_inputs_never_panic() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut valid = Vec::new();
        encode_pairs([(&b"host"[..], &b"example.com"[..]), (b":path", b"/")].into_iter(), &mut valid);
        let mut out = Vec::new();
        for i in 0..50_000 {
            let mut data = if i % 2 == 0 { valid.clone() } else { vec![0; (next() % 64) as usize] };
            for _ in 0..(next() % 4) {
                if data.is_empty() {
                    break;
                }
                let at = (next() as usize) % data.len();
                data[at] = next() as u8;
            }
            if let Ok(pairs) = decode_pairs(&data) {
                encode_pairs(pairs.iter().copied(), &mut out);
                if !pairs.is_empty() {
                    assert_eq!(out, data);
                }
            }
        }
    }
}
