//! Just enough of the protobuf wire format to walk OTLP messages without decoding them whole.
//!
//! Why by hand: the collector reads five fields of each span and forwards the rest untouched;
//! decoding every attribute, event and link into owned structs (prost) would cost an allocation
//! per string and several times the encoded size in memory. The walker borrows from the buffer.

use std::fmt;

/// A wire-format violation: truncated input, a bad varint, an unsupported wire type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WireError(pub(crate) &'static str);

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// One field's value, borrowed from the buffer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

impl<'a> Value<'a> {
    pub(crate) fn bytes(self) -> Result<&'a [u8], WireError> {
        match self {
            Value::Bytes(b) => Ok(b),
            _ => Err(WireError("expected a length-delimited field")),
        }
    }
}

/// Iterates over the fields of one message.
#[derive(Debug, Clone)]
pub(crate) struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, WireError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(WireError("truncated varint"));
            };
            self.pos += 1;
            // The tenth byte holds only the top bit: more would overflow 64 bits, which a
            // protobuf decoder refuses.
            if shift == 63 && b > 1 {
                return Err(WireError("varint overflows 64 bits"));
            }
            value |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(value);
            }
        }
        Err(WireError("varint longer than 10 bytes"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(WireError("field runs past the end of its message"))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    /// The next field: its number and value; `None` at the end of the message.
    pub(crate) fn next_field(&mut self) -> Option<Result<(u32, Value<'a>), WireError>> {
        if self.pos >= self.buf.len() {
            return None;
        }
        Some(self.read_field())
    }

    fn read_field(&mut self) -> Result<(u32, Value<'a>), WireError> {
        let key = self.varint()?;
        // Field numbers are 29 bits; a decoder refuses larger ones.
        let number = u32::try_from(key >> 3)
            .ok()
            .filter(|&n| n < 1 << 29)
            .ok_or(WireError("field number too large"))?;
        if number == 0 {
            return Err(WireError("field number 0"));
        }
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                let b = self.take(8)?;
                Value::Fixed64(u64::from_le_bytes(b.try_into().expect("8 bytes")))
            }
            2 => {
                let len =
                    usize::try_from(self.varint()?).map_err(|_| WireError("length too large"))?;
                Value::Bytes(self.take(len)?)
            }
            5 => {
                let b = self.take(4)?;
                Value::Fixed32(u32::from_le_bytes(b.try_into().expect("4 bytes")))
            }
            _ => {
                return Err(WireError(
                    "unsupported wire type (groups are not used by OTLP)",
                ))
            }
        };
        Ok((number, value))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, Value<'a>), WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.next_field();
        if matches!(item, Some(Err(_))) {
            // Stop after an error: the position is no longer trustworthy.
            self.pos = self.buf.len();
        }
        item
    }
}

/// Number of bytes of `v` as a varint.
pub(crate) fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Bytes taken by a length-delimited field with a payload of `len` bytes.
pub(crate) fn len_field_size(field: u32, len: usize) -> usize {
    varint_len(u64::from(field) << 3 | 2) + varint_len(len as u64) + len
}

/// Writes the key and length of a length-delimited field; the caller writes the payload.
pub(crate) fn put_len_header(out: &mut Vec<u8>, field: u32, len: usize) {
    put_varint(out, u64::from(field) << 3 | 2);
    put_varint(out, len as u64);
}

pub(crate) fn put_len_field(out: &mut Vec<u8>, field: u32, payload: &[u8]) {
    put_len_header(out, field, payload.len());
    out.extend_from_slice(payload);
}

pub(crate) fn put_fixed64_field(out: &mut Vec<u8>, field: u32, v: u64) {
    put_varint(out, u64::from(field) << 3 | 1);
    out.extend_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_should_round_trip_with_their_length() {
        for v in [0, 1, 127, 128, 300, 1 << 35, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
            // a varint field 1 holding v
            let mut msg = vec![0x08];
            msg.extend_from_slice(&out);
            let (n, val) = Fields::new(&msg).next().unwrap().unwrap();
            assert_eq!((n, val), (1, Value::Varint(v)));
        }
    }

    #[test]
    fn truncated_and_invalid_input_should_be_errors_not_panics() {
        for bad in [
            &[0x0a, 0x05, 1, 2][..], // length past the end
            &[0x08, 0xff][..],       // truncated varint
            &[0x0b][..],             // group start
            &[0x00, 0x00][..],       // field 0
            &[0x09, 1, 2, 3][..],    // short fixed64
            &[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ][..],
        ] {
            assert!(Fields::new(bad).any(|f| f.is_err()), "{bad:?}");
        }
    }

    #[test]
    fn fields_should_be_read_in_order() {
        let mut msg = Vec::new();
        put_len_field(&mut msg, 2, b"abc");
        put_fixed64_field(&mut msg, 7, 42);
        msg.extend_from_slice(&[0x7d, 1, 0, 0, 0]); // field 15, fixed32
        let fields: Vec<_> = Fields::new(&msg).map(Result::unwrap).collect();
        assert_eq!(
            fields,
            vec![
                (2, Value::Bytes(b"abc")),
                (7, Value::Fixed64(42)),
                (15, Value::Fixed32(1))
            ]
        );
        assert_eq!(msg.len(), len_field_size(2, 3) + 9 + 5);
    }
}
