//! Chunked transfer coding, decoded incrementally: ATS hands a request transform a chunked
//! upload still chunk-encoded.
#![forbid(unsafe_code)]

/// Where a [`Dechunker`] is in the chunked framing.
#[derive(Debug, Default, PartialEq)]
enum Chunking {
    /// Reading a chunk-size line.
    #[default]
    Size,
    /// Inside a chunk's data, with this many bytes left.
    Data(u64),
    /// After a chunk's data, before its CRLF ends.
    DataEnd,
    /// Reading trailer lines after the last chunk.
    Trailer,
    /// After the final empty line.
    Done,
}

/// An incremental decoder of chunked transfer coding (RFC 9112, 7.1): chunk extensions and
/// trailers are dropped.
#[derive(Debug, Default)]
pub(crate) struct Dechunker {
    state: Chunking,
    line: Vec<u8>,
}

impl Dechunker {
    /// Decodes `input`, appending the data to `out`. `Err` on malformed framing.
    pub(crate) fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), ()> {
        while !input.is_empty() {
            match self.state {
                Chunking::Data(left) => {
                    let n = (left as usize).min(input.len());
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.state = if left == n as u64 { Chunking::DataEnd } else { Chunking::Data(left - n as u64) };
                }
                Chunking::Done => return Ok(()),
                _ => {
                    let (byte, rest) = (input[0], &input[1..]);
                    input = rest;
                    if byte != b'\n' {
                        if self.line.len() > 4096 {
                            return Err(());
                        }
                        self.line.push(byte);
                        continue;
                    }
                    let line = std::mem::take(&mut self.line);
                    let line = line.strip_suffix(b"\r").unwrap_or(&line);
                    self.state = match self.state {
                        Chunking::Size => {
                            let hex = line.split(|&b| b == b';').next().unwrap_or_default();
                            let hex = std::str::from_utf8(hex).map_err(|_| ())?.trim();
                            match u64::from_str_radix(hex, 16).map_err(|_| ())? {
                                0 => Chunking::Trailer,
                                n => Chunking::Data(n),
                            }
                        }
                        Chunking::DataEnd if line.is_empty() => Chunking::Size,
                        Chunking::DataEnd => return Err(()),
                        Chunking::Trailer if line.is_empty() => Chunking::Done,
                        _ => Chunking::Trailer,
                    };
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Dechunker;

    #[test]
    fn dechunks_across_any_split() {
        let encoded = b"5;ext=1\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nx-trailer: 1\r\n\r\n";
        for split in 1..encoded.len() {
            let mut d = Dechunker::default();
            let mut out = Vec::new();
            for part in encoded.chunks(split) {
                d.feed(part, &mut out).unwrap();
            }
            assert_eq!(out, b"hello 0123456789", "split {split}");
        }
        assert!(Dechunker::default().feed(b"zz\r\n", &mut Vec::new()).is_err());
        assert!(Dechunker::default().feed(b"1\r\nab\r\n", &mut Vec::new()).is_err());
    }
}
