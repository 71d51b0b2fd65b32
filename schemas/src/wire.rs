//! A direct binary encoder and decoder for exactly `location.avsc`: the hot path of every
//! stage. The generic `apache-avro` path builds a `Value` tree per record and resolves it
//! against the schema (a few µs and a dozen allocations per fix); this writes and reads the
//! same bytes field by field. The property tests in `tests/codec.rs` check that both paths
//! produce and accept identical bytes; the generic path stays the reference and handles
//! every other writer schema.

use crate::{CodecError, FixRef, LocationFix};

fn put_long(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_long(out, s.len() as i64);
    out.extend_from_slice(s.as_bytes());
}

/// A `["null", T]` union: branch 0 for null, else branch 1 and the value.
fn put_opt<T>(out: &mut Vec<u8>, v: Option<T>, put: impl FnOnce(&mut Vec<u8>, T)) {
    match v {
        None => put_long(out, 0),
        Some(v) => {
            put_long(out, 1);
            put(out, v);
        }
    }
}

/// Appends the Avro binary datum of `fix` (no framing).
pub fn write_fix(out: &mut Vec<u8>, fix: &LocationFix) {
    put_str(out, &fix.tenant);
    put_str(out, &fix.user_id);
    put_str(out, &fix.device_id);
    put_long(out, fix.seq);
    put_long(out, fix.ts);
    out.extend_from_slice(&fix.lat.to_le_bytes());
    out.extend_from_slice(&fix.lon.to_le_bytes());
    let f32 = |out: &mut Vec<u8>, v: f32| out.extend_from_slice(&v.to_le_bytes());
    put_opt(out, fix.accuracy_m, f32);
    put_opt(out, fix.altitude_m, |out, v| {
        out.extend_from_slice(&v.to_le_bytes())
    });
    put_opt(out, fix.speed_mps, f32);
    put_opt(out, fix.heading_deg, f32);
    put_opt(out, fix.battery_pct, |out, v| put_long(out, i64::from(v)));
    put_opt(out, fix.activity.as_deref(), put_str);
    put_opt(out, fix.source.as_deref(), put_str);
    put_long(out, fix.received_at);
}

/// Confluent framing (magic byte, schema id) followed by the datum.
pub fn encode_framed(id: u32, fix: &LocationFix) -> Vec<u8> {
    let mut out = Vec::with_capacity(96 + fix.tenant.len() + fix.user_id.len());
    out.push(0);
    out.extend_from_slice(&id.to_be_bytes());
    write_fix(&mut out, fix);
    out
}

struct Reader<'a> {
    buf: &'a [u8],
}

fn err(msg: impl Into<String>) -> CodecError {
    CodecError::Decode(msg.into())
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], CodecError> {
        if self.buf.len() < n {
            return Err(err(format!(
                "{what}: needs {n} bytes, {} left",
                self.buf.len()
            )));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], CodecError> {
        let (head, rest) = self
            .buf
            .split_first_chunk::<N>()
            .ok_or_else(|| err(format!("{what}: needs {N} bytes, {} left", self.buf.len())))?;
        self.buf = rest;
        Ok(*head)
    }

    fn long(&mut self, what: &str) -> Result<i64, CodecError> {
        let mut z: u64 = 0;
        for i in 0..10 {
            let [b] = self.array::<1>(what)?;
            if i == 9 && b > 1 {
                return Err(err(format!("{what}: varint overflows 64 bits")));
            }
            z |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(((z >> 1) as i64) ^ -((z & 1) as i64));
            }
        }
        Err(err(format!("{what}: varint longer than 10 bytes")))
    }

    fn int(&mut self, what: &str) -> Result<i32, CodecError> {
        let v = self.long(what)?;
        i32::try_from(v).map_err(|_| err(format!("{what}: {v} does not fit an int")))
    }

    fn string(&mut self, what: &str) -> Result<&'a str, CodecError> {
        let n = self.long(what)?;
        let n = usize::try_from(n).map_err(|_| err(format!("{what}: negative length {n}")))?;
        let bytes = self.take(n, what)?;
        std::str::from_utf8(bytes).map_err(|_| err(format!("{what}: not UTF-8")))
    }

    fn f64(&mut self, what: &str) -> Result<f64, CodecError> {
        self.array(what).map(f64::from_le_bytes)
    }

    fn f32(&mut self, what: &str) -> Result<f32, CodecError> {
        self.array(what).map(f32::from_le_bytes)
    }

    /// A `["null", T]` union: branch 0 is null, branch 1 is a value read by `read`.
    fn opt<T>(
        &mut self,
        what: &str,
        read: impl FnOnce(&mut Self, &str) -> Result<T, CodecError>,
    ) -> Result<Option<T>, CodecError> {
        match self.long(what)? {
            0 => Ok(None),
            1 => read(self, what).map(Some),
            b => Err(err(format!("{what}: union branch {b} out of range"))),
        }
    }
}

/// Reads one datum written with `location.avsc`; the whole input must be that datum.
pub fn read_fix(datum: &[u8]) -> Result<LocationFix, CodecError> {
    read_fix_ref(datum).map(|f| f.to_fix())
}

/// [`read_fix`] in place: the strings borrow `datum`.
pub fn read_fix_ref(datum: &[u8]) -> Result<FixRef<'_>, CodecError> {
    let mut r = Reader { buf: datum };
    let fix = FixRef {
        tenant: r.string("tenant")?,
        user_id: r.string("user_id")?,
        device_id: r.string("device_id")?,
        seq: r.long("seq")?,
        ts: r.long("ts")?,
        lat: r.f64("lat")?,
        lon: r.f64("lon")?,
        accuracy_m: r.opt("accuracy_m", Reader::f32)?,
        altitude_m: r.opt("altitude_m", Reader::f64)?,
        speed_mps: r.opt("speed_mps", Reader::f32)?,
        heading_deg: r.opt("heading_deg", Reader::f32)?,
        battery_pct: r.opt("battery_pct", Reader::int)?,
        activity: r.opt("activity", Reader::string)?,
        source: r.opt("source", Reader::string)?,
        received_at: r.long("received_at")?,
    };
    if !r.buf.is_empty() {
        return Err(err(format!(
            "{} trailing bytes after the record",
            r.buf.len()
        )));
    }
    Ok(fix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zigzag_varints() {
        for (v, bytes) in [
            (0i64, vec![0u8]),
            (-1, vec![1]),
            (1, vec![2]),
            (-64, vec![0x7f]),
            (64, vec![0x80, 0x01]),
        ] {
            let mut out = vec![];
            put_long(&mut out, v);
            assert_eq!(out, bytes, "{v}");
            assert_eq!(Reader { buf: &out }.long("x").unwrap(), v);
        }
        for v in [i64::MIN, i64::MAX, 1_760_000_000_000] {
            let mut out = vec![];
            put_long(&mut out, v);
            assert_eq!(Reader { buf: &out }.long("x").unwrap(), v);
        }
    }

    #[test]
    fn hostile_input_is_an_error() {
        // Length prefix far past the end, overlong varint, bad union branch.
        assert!(read_fix(&[0xfe, 0xff, 0xff, 0xff, 0x0f]).is_err());
        assert!(read_fix(&[0xff; 11]).is_err());
        assert!(read_fix(&[]).is_err());
        assert!(read_fix(&[0x01]).is_err(), "negative length");
    }
}
