//! CQL native-protocol frames (the 9-byte header of v3/v4 and the body) and the small
//! readers/writers of the protocol's notation (`[int]`, `[string]`, `[option]`, ...).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const HEADER_LEN: usize = 9;
/// Cassandra's own limit for a frame body (256 MB); a larger length is a broken stream.
pub const MAX_BODY: usize = 256 * 1024 * 1024;

pub const FLAG_COMPRESSION: u8 = 0x01;
pub const FLAG_TRACING: u8 = 0x02;

pub mod opcode {
    pub const ERROR: u8 = 0x00;
    pub const STARTUP: u8 = 0x01;
    pub const QUERY: u8 = 0x07;
    pub const RESULT: u8 = 0x08;
    pub const PREPARE: u8 = 0x09;
    pub const EXECUTE: u8 = 0x0A;
}

#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("frame body truncated while reading {0}")]
    Truncated(&'static str),
    #[error("frame body of {0} bytes is larger than the {MAX_BODY}-byte limit")]
    TooLarge(usize),
    #[error("unsupported CQL type option {0:#06x}")]
    UnknownType(u16),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Debug, Clone)]
pub struct Frame {
    pub version: u8,
    pub flags: u8,
    pub stream: i16,
    pub opcode: u8,
    pub body: Bytes,
}

impl Frame {
    pub async fn read<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Frame>, ProtoError> {
        let mut header = [0u8; HEADER_LEN];
        match r.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let len = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) as usize;
        if len > MAX_BODY {
            return Err(ProtoError::TooLarge(len));
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).await?;
        Ok(Some(Frame {
            version: header[0],
            flags: header[1],
            stream: i16::from_be_bytes([header[2], header[3]]),
            opcode: header[4],
            body: body.into(),
        }))
    }

    /// Writes the frame to `w` (a buffered writer: the caller flushes).
    pub async fn write<W: AsyncWrite + Unpin>(&self, w: &mut W) -> Result<(), ProtoError> {
        let mut header = [0u8; HEADER_LEN];
        header[0] = self.version;
        header[1] = self.flags;
        header[2..4].copy_from_slice(&self.stream.to_be_bytes());
        header[4] = self.opcode;
        header[5..9].copy_from_slice(&(self.body.len() as u32).to_be_bytes());
        w.write_all(&header).await?;
        w.write_all(&self.body).await?;
        Ok(())
    }

    /// Whether `buf` starts with a whole frame (so reading it needs no more input).
    pub fn is_whole(buf: &[u8]) -> bool {
        buf.len() >= HEADER_LEN
            && buf.len() - HEADER_LEN
                >= u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) as usize
    }
}

/// A cursor over a frame body.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn pos(&self) -> usize {
        self.pos
    }

    /// The bytes read since position `start`.
    pub fn slice_from(&self, start: usize) -> &'a [u8] {
        &self.buf[start..self.pos]
    }

    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ProtoError> {
        if self.buf.len() - self.pos < n {
            return Err(ProtoError::Truncated(what));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub fn u16(&mut self) -> Result<u16, ProtoError> {
        Ok(self.take(2, "[short]")?.get_u16())
    }

    pub fn i32(&mut self) -> Result<i32, ProtoError> {
        Ok(self.take(4, "[int]")?.get_i32())
    }

    pub fn string(&mut self) -> Result<&'a str, ProtoError> {
        let n = self.u16()? as usize;
        std::str::from_utf8(self.take(n, "[string]")?)
            .map_err(|_| ProtoError::Truncated("utf-8 [string]"))
    }

    pub fn long_string(&mut self) -> Result<&'a str, ProtoError> {
        let n = self.i32()?.max(0) as usize;
        std::str::from_utf8(self.take(n, "[long string]")?)
            .map_err(|_| ProtoError::Truncated("utf-8 [long string]"))
    }

    pub fn short_bytes(&mut self) -> Result<&'a [u8], ProtoError> {
        let n = self.u16()? as usize;
        self.take(n, "[short bytes]")
    }

    /// `[bytes]`: an int length (negative means null) and that many bytes.
    pub fn bytes(&mut self) -> Result<Option<&'a [u8]>, ProtoError> {
        let n = self.i32()?;
        if n < 0 {
            return Ok(None);
        }
        self.take(n as usize, "[bytes]").map(Some)
    }

    pub fn skip(&mut self, n: usize, what: &'static str) -> Result<(), ProtoError> {
        self.take(n, what).map(|_| ())
    }

    /// Skips one `[option]` describing a column type, including nested types.
    pub fn skip_type(&mut self) -> Result<(), ProtoError> {
        let id = self.u16()?;
        match id {
            0x0000 => {
                self.string()?;
            }
            0x0001..=0x0015 => {}
            0x0020 | 0x0022 => self.skip_type()?,
            0x0021 => {
                self.skip_type()?;
                self.skip_type()?;
            }
            0x0030 => {
                self.string()?;
                self.string()?;
                let n = self.u16()?;
                for _ in 0..n {
                    self.string()?;
                    self.skip_type()?;
                }
            }
            0x0031 => {
                let n = self.u16()?;
                for _ in 0..n {
                    self.skip_type()?;
                }
            }
            other => return Err(ProtoError::UnknownType(other)),
        }
        Ok(())
    }
}

pub fn put_string(out: &mut BytesMut, s: &str) {
    out.put_u16(s.len() as u16);
    out.put_slice(s.as_bytes());
}

pub fn put_long_string(out: &mut BytesMut, s: &str) {
    out.put_i32(s.len() as i32);
    out.put_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_whole_only_with_its_header_and_all_of_its_body() {
        let mut buf = vec![4, 0, 0, 1, opcode::QUERY, 0, 0, 0, 3];
        assert!(!Frame::is_whole(&buf[..8]), "part of a header");
        assert!(!Frame::is_whole(&buf), "a header without its body");
        buf.extend([1, 2]);
        assert!(!Frame::is_whole(&buf), "part of the body");
        buf.push(3);
        assert!(Frame::is_whole(&buf));
        buf.extend([4, 0]);
        assert!(Frame::is_whole(&buf), "a whole frame and part of the next");
        assert!(!Frame::is_whole(&[]));
    }
}
