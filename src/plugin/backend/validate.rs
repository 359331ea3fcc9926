//! What a guest may write into a request or response: a guest is untrusted input. Field
//! names (and methods) must be RFC 9110 tokens; field values, `:path` and `:authority` must not
//! hold CR, LF or NUL — a value with a line break would reach the origin or the client as extra
//! header lines (request smuggling, response splitting). A refused write answers
//! `BAD_ARGUMENT`, changes nothing, and is counted
//! (`ats_wasm_rejected_writes_total{filter,reason}`).
#![forbid(unsafe_code)]

/// Why a write was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejected {
    /// The field name (or method) is not an RFC 9110 token.
    Name,
    /// The value holds CR, LF or NUL (or, for `:path` and `:authority`, a space or control).
    Value,
}

/// RFC 9110 5.6.2 `tchar`, one entry per byte (a lookup per byte of every name a guest writes).
static TCHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric();
        b += 1;
    }
    let extra = b"!#$%&'*+-.^_`|~";
    let mut i = 0;
    while i < extra.len() {
        t[extra[i] as usize] = true;
        i += 1;
    }
    t
};

/// RFC 9110 5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    TCHAR[b as usize]
}

/// An RFC 9110 token: a field name or a method.
pub fn token(name: &[u8]) -> Result<(), Rejected> {
    if !name.is_empty() && name.iter().all(|&b| is_tchar(b)) { Ok(()) } else { Err(Rejected::Name) }
}

/// A field value: anything but CR, LF and NUL (RFC 9110 5.5 makes a recipient reject or
/// replace them; we refuse them).
pub fn field_value(value: &[u8]) -> Result<(), Rejected> {
    if value.iter().any(|&b| matches!(b, b'\r' | b'\n' | 0)) { Err(Rejected::Value) } else { Ok(()) }
}

/// A request-line or `Host` part (`:path`, `:authority`): no spaces or control characters.
pub fn request_line_part(value: &[u8]) -> Result<(), Rejected> {
    if value.iter().any(|&b| b <= b' ' || b == 0x7f) { Err(Rejected::Value) } else { Ok(()) }
}

/// A header field a guest writes: name and value.
pub fn field(name: &[u8], value: &[u8]) -> Result<(), Rejected> {
    token(name)?;
    field_value(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_tokens_and_values_carry_no_line_breaks() {
        assert_eq!(field(b"x-added-by", b"ats-wasm, v1 (test)"), Ok(()));
        assert_eq!(field(b"X_Custom~1", b"\ttabbed\x7f\xff"), Ok(()));
        for bad in [&b""[..], b"x a", b"x:a", b"x\r\n", b"(x)", b"x/y", b"\xc3\xa9"] {
            assert_eq!(token(bad), Err(Rejected::Name), "{bad:?}");
        }
        for bad in [&b"1\r\nx-injected: evil"[..], b"a\nb", b"a\rb", b"a\0b"] {
            assert_eq!(field(b"x-a", bad), Err(Rejected::Value), "{bad:?}");
        }
        assert_eq!(request_line_part(b"/a?b=c"), Ok(()));
        for bad in [&b"/a b"[..], b"/a\r\nHost: x", b"/\0", b"/\x7f"] {
            assert_eq!(request_line_part(bad), Err(Rejected::Value), "{bad:?}");
        }
    }
}
