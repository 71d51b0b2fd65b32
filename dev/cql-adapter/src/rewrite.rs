//! What the adapter changes between a CQL v4 client and a CQL v3 server (Cassandra 2.1).
//!
//! | difference                           | what the adapter does                                   |
//! |--------------------------------------|---------------------------------------------------------|
//! | version byte of every frame          | 0x04 → 0x03 on requests, 0x83 → 0x84 on responses        |
//! | CQL version asked for in STARTUP     | rewritten to 3.0.0 (Cassandra 2.1 speaks CQL 3.2)        |
//! | compression in STARTUP               | refused with a clear error (not bridged)                 |
//! | prepared-statement metadata          | v4's partition-key index list inserted (empty)           |
//! | `system.local` has no `rpc_address`  | column removed from the query, re-added to the result    |
//! |                                      | with the adapter's own address (so the driver's node     |
//! |                                      | address is the adapter, not Cassandra behind it)         |
//!
//! Unset bind values (v4 only) and v4-only types never reach a 2.1 server usefully; Cassandra
//! itself answers them with a protocol error.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use bytes::{BufMut, BytesMut};

use crate::frame::{
    FLAG_COMPRESSION, FLAG_TRACING, Frame, ProtoError, Reader, opcode, put_long_string, put_string,
};

pub const CLIENT_VERSION: u8 = 0x04;
pub const SERVER_VERSION: u8 = 0x03;

const RESULT_ROWS: i32 = 0x0002;
const RESULT_PREPARED: i32 = 0x0004;
const ROWS_GLOBAL_SPEC: i32 = 0x0001;
const ROWS_HAS_MORE_PAGES: i32 = 0x0002;
const ROWS_NO_METADATA: i32 = 0x0004;
const TYPE_INET: u16 = 0x0010;
const ERROR_PROTOCOL: i32 = 0x000A;

/// Column index of `rpc_address` in a statement whose results need it added back.
pub type Column = usize;

/// Prepared statements (by id) whose result rows need `rpc_address` added back. Cassandra's
/// prepared ids are global to the node, so this is shared by every connection.
pub type PreparedPatches = Mutex<HashMap<Vec<u8>, Column>>;

/// What to do with the response on one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pending {
    /// A Rows result of a rewritten QUERY or EXECUTE: add the column back.
    Rows(Column),
    /// The Prepared result of a rewritten PREPARE: add the column to its result metadata
    /// and remember the statement id.
    Prepare(Column),
}

/// A request as it should go upstream, or an error to answer the client with directly.
#[derive(Debug)]
pub enum Outcome {
    Forward(Frame, Option<Pending>),
    Reply(Frame),
}

pub fn error_frame(stream: i16, code: i32, message: &str) -> Frame {
    let mut body = BytesMut::new();
    body.put_i32(code);
    put_string(&mut body, message);
    Frame {
        version: 0x80 | CLIENT_VERSION,
        flags: 0,
        stream,
        opcode: opcode::ERROR,
        body: body.freeze(),
    }
}

fn lock(m: &PreparedPatches) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Column>> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Rewrites a client (v4) request for the v3 server.
pub fn request(mut frame: Frame, prepared: &PreparedPatches) -> Result<Outcome, ProtoError> {
    if frame.version != CLIENT_VERSION {
        return Ok(Outcome::Reply(error_frame(
            frame.stream,
            ERROR_PROTOCOL,
            &format!(
                "Invalid or unsupported protocol version ({}); the local CQL adapter speaks version 4 to clients",
                frame.version & 0x7f
            ),
        )));
    }
    if frame.flags & FLAG_COMPRESSION != 0 {
        return Ok(Outcome::Reply(error_frame(
            frame.stream,
            ERROR_PROTOCOL,
            "compressed frames are not supported by the local CQL adapter; disable compression",
        )));
    }
    frame.version = SERVER_VERSION;
    let mut pending = None;
    match frame.opcode {
        opcode::STARTUP => {
            let mut r = Reader::new(&frame.body);
            let n = r.u16()?;
            let mut options = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let k = r.string()?.to_string();
                let v = r.string()?.to_string();
                if k == "COMPRESSION" {
                    return Ok(Outcome::Reply(error_frame(
                        frame.stream,
                        ERROR_PROTOCOL,
                        "compression is not supported by the local CQL adapter; disable it in the driver",
                    )));
                }
                options.push((k, v));
            }
            let mut body = BytesMut::new();
            body.put_u16(options.len() as u16);
            for (k, v) in &options {
                put_string(&mut body, k);
                put_string(&mut body, if k == "CQL_VERSION" { "3.0.0" } else { v });
            }
            frame.body = body.freeze();
        }
        opcode::QUERY | opcode::PREPARE => {
            let mut r = Reader::new(&frame.body);
            let query = r.long_string()?;
            if let Some((rewritten, index)) = drop_rpc_address(query) {
                let mut body = BytesMut::new();
                put_long_string(&mut body, &rewritten);
                body.put_slice(r.rest());
                frame.body = body.freeze();
                pending = Some(if frame.opcode == opcode::QUERY {
                    Pending::Rows(index)
                } else {
                    Pending::Prepare(index)
                });
            }
        }
        opcode::EXECUTE => {
            let mut r = Reader::new(&frame.body);
            let id = r.short_bytes()?;
            pending = lock(prepared).get(id).map(|index| Pending::Rows(*index));
        }
        _ => {}
    }
    Ok(Outcome::Forward(frame, pending))
}

/// `SELECT a, rpc_address, b FROM system.local ...` → (`SELECT a, b FROM system.local ...`, 1).
fn drop_rpc_address(query: &str) -> Option<(String, usize)> {
    let lower = query.to_ascii_lowercase();
    if !lower.contains("system.local") || !lower.contains("rpc_address") {
        return None;
    }
    let select = lower.find("select")?;
    let from = lower.find(" from ")?;
    let columns: Vec<&str> = query[select + 6..from].split(',').map(str::trim).collect();
    let index = columns
        .iter()
        .position(|c| c.eq_ignore_ascii_case("rpc_address"))?;
    let kept: Vec<&str> = columns
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != index)
        .map(|(_, c)| *c)
        .collect();
    if kept.is_empty() {
        return None;
    }
    Some((
        format!("SELECT {}{}", kept.join(", "), &query[from..]),
        index,
    ))
}

/// Rewrites a server (v3) response for the v4 client, on a connection whose local address
/// (what the driver must take for the node's address) is `adapter_ip`.
pub fn response(
    mut frame: Frame,
    pending: Option<Pending>,
    prepared: &PreparedPatches,
    adapter_ip: IpAddr,
) -> Result<Frame, ProtoError> {
    frame.version = 0x80 | CLIENT_VERSION;
    if frame.opcode != opcode::RESULT {
        return Ok(frame);
    }
    let prefix = if frame.flags & FLAG_TRACING != 0 {
        16
    } else {
        0
    };
    let body = &frame.body[..];
    let mut r = Reader::new(body);
    r.skip(prefix, "tracing id")?;
    let kind = r.i32()?;
    match kind {
        RESULT_PREPARED => {
            let id = r.short_bytes()?.to_vec();
            let flags = r.i32()?;
            r.i32()?; // bind-variable count
            let at = r.pos();
            let mut out = BytesMut::with_capacity(body.len() + 64);
            out.put_slice(&body[..at]);
            out.put_i32(0); // v4: partition-key indexes (none known: no token-aware routing)
            match pending {
                Some(Pending::Prepare(index)) => {
                    // Skip the bind-variable specs, then patch the result metadata.
                    let global = flags & ROWS_GLOBAL_SPEC != 0;
                    if global {
                        r.string()?;
                        r.string()?;
                    }
                    let count = body[at - 4..at]
                        .iter()
                        .fold(0usize, |a, b| a << 8 | *b as usize);
                    for _ in 0..count {
                        if !global {
                            r.string()?;
                            r.string()?;
                        }
                        r.string()?;
                        r.skip_type()?;
                    }
                    out.put_slice(&body[at..r.pos()]);
                    copy_metadata(&mut r, &mut out, index)?;
                    out.put_slice(r.rest());
                    lock(prepared).insert(id, index);
                }
                _ => out.put_slice(&body[at..]),
            }
            frame.body = out.freeze();
        }
        RESULT_ROWS => {
            if let Some(Pending::Rows(index)) = pending {
                let mut out = BytesMut::with_capacity(body.len() + 64);
                out.put_slice(&body[..prefix + 4]);
                let count = copy_metadata(&mut r, &mut out, index)?;
                let rows = r.i32()?.max(0) as usize;
                out.put_i32(rows as i32);
                let inet: Vec<u8> = match adapter_ip {
                    IpAddr::V4(ip) => ip.octets().to_vec(),
                    IpAddr::V6(ip) => ip.octets().to_vec(),
                };
                let index = index.min(count);
                for _ in 0..rows {
                    for i in 0..=count {
                        if i == index {
                            out.put_i32(inet.len() as i32);
                            out.put_slice(&inet);
                        }
                        if i < count {
                            let start = r.pos();
                            r.bytes()?;
                            out.put_slice(&body[start..r.pos()]);
                        }
                    }
                }
                out.put_slice(r.rest());
                frame.body = out.freeze();
            }
        }
        _ => {}
    }
    Ok(frame)
}

/// Copies one rows-metadata block from `r` to `out` with an `rpc_address inet` column
/// inserted at `index`; returns the original column count.
fn copy_metadata(
    r: &mut Reader<'_>,
    out: &mut BytesMut,
    index: Column,
) -> Result<usize, ProtoError> {
    let flags = r.i32()?;
    let count = r.i32()?.max(0) as usize;
    out.put_i32(flags);
    out.put_i32(count as i32 + 1);
    if flags & ROWS_HAS_MORE_PAGES != 0 {
        let start = r.pos();
        r.bytes()?;
        out.put_slice(r.slice_from(start));
    }
    let global = flags & ROWS_GLOBAL_SPEC != 0;
    if global {
        let start = r.pos();
        r.string()?;
        r.string()?;
        out.put_slice(r.slice_from(start));
    }
    if flags & ROWS_NO_METADATA != 0 {
        return Ok(count);
    }
    let index = index.min(count);
    for i in 0..=count {
        if i == index {
            if !global {
                put_string(out, "system");
                put_string(out, "local");
            }
            put_string(out, "rpc_address");
            out.put_u16(TYPE_INET);
        }
        if i < count {
            let start = r.pos();
            if !global {
                r.string()?;
                r.string()?;
            }
            r.string()?;
            r.skip_type()?;
            out.put_slice(r.slice_from(start));
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn frame(version: u8, opcode: u8, body: BytesMut) -> Frame {
        Frame {
            version,
            flags: 0,
            stream: 7,
            opcode,
            body: body.freeze(),
        }
    }

    #[test]
    fn drops_rpc_address_from_the_driver_query() {
        let q = "SELECT host_id, rpc_address, data_center, rack, tokens, cluster_name FROM system.local WHERE key='local'";
        let (q2, i) = drop_rpc_address(q).unwrap();
        assert_eq!(
            q2,
            "SELECT host_id, data_center, rack, tokens, cluster_name FROM system.local WHERE key='local'"
        );
        assert_eq!(i, 1);
        assert!(drop_rpc_address("SELECT rpc_address FROM system.peers").is_none());
        assert!(drop_rpc_address("SELECT host_id FROM system.local").is_none());
    }

    #[test]
    fn startup_asks_for_cql_3() {
        let mut body = BytesMut::new();
        body.put_u16(1);
        put_string(&mut body, "CQL_VERSION");
        put_string(&mut body, "4.0.0");
        let Outcome::Forward(f, None) =
            request(frame(4, opcode::STARTUP, body), &PreparedPatches::default()).unwrap()
        else {
            panic!("expected forward")
        };
        assert_eq!(f.version, 3);
        let mut r = Reader::new(&f.body);
        assert_eq!(r.u16().unwrap(), 1);
        assert_eq!(r.string().unwrap(), "CQL_VERSION");
        assert_eq!(r.string().unwrap(), "3.0.0");
    }

    #[test]
    fn other_versions_and_compression_are_refused() {
        let Outcome::Reply(e) = request(
            frame(5, opcode::QUERY, BytesMut::new()),
            &PreparedPatches::default(),
        )
        .unwrap() else {
            panic!("expected a reply")
        };
        assert_eq!(e.opcode, opcode::ERROR);
        let mut body = BytesMut::new();
        body.put_u16(1);
        put_string(&mut body, "COMPRESSION");
        put_string(&mut body, "lz4");
        assert!(matches!(
            request(frame(4, opcode::STARTUP, body), &PreparedPatches::default()).unwrap(),
            Outcome::Reply(_)
        ));
    }

    #[test]
    fn prepared_metadata_gets_pk_indexes() {
        let mut body = BytesMut::new();
        body.put_i32(RESULT_PREPARED);
        body.put_u16(2);
        body.put_slice(&[0xab, 0xcd]);
        body.put_i32(ROWS_GLOBAL_SPEC);
        body.put_i32(1);
        put_string(&mut body, "ks");
        put_string(&mut body, "t");
        put_string(&mut body, "a");
        body.put_u16(0x0009);
        body.put_i32(ROWS_NO_METADATA);
        body.put_i32(0);
        let f = response(
            frame(0x83, opcode::RESULT, body),
            None,
            &PreparedPatches::default(),
            IP,
        )
        .unwrap();
        assert_eq!(f.version, 0x84);
        let mut r = Reader::new(&f.body);
        r.i32().unwrap();
        r.short_bytes().unwrap();
        assert_eq!(r.i32().unwrap(), ROWS_GLOBAL_SPEC);
        assert_eq!(r.i32().unwrap(), 1);
        assert_eq!(r.i32().unwrap(), 0, "pk_count");
        assert_eq!(r.string().unwrap(), "ks");
    }

    #[test]
    fn rows_get_the_adapter_address() {
        let mut body = BytesMut::new();
        body.put_i32(RESULT_ROWS);
        body.put_i32(ROWS_GLOBAL_SPEC);
        body.put_i32(2);
        put_string(&mut body, "system");
        put_string(&mut body, "local");
        put_string(&mut body, "host_id");
        body.put_u16(0x000C);
        put_string(&mut body, "tokens");
        body.put_u16(0x0022);
        body.put_u16(0x000D);
        body.put_i32(1);
        body.put_i32(2);
        body.put_slice(b"hi");
        body.put_i32(-1);
        let f = response(
            frame(0x83, opcode::RESULT, body),
            Some(Pending::Rows(1)),
            &PreparedPatches::default(),
            IP,
        )
        .unwrap();
        let mut r = Reader::new(&f.body);
        assert_eq!(r.i32().unwrap(), RESULT_ROWS);
        r.i32().unwrap();
        assert_eq!(r.i32().unwrap(), 3);
        r.string().unwrap();
        r.string().unwrap();
        assert_eq!(r.string().unwrap(), "host_id");
        r.skip_type().unwrap();
        assert_eq!(r.string().unwrap(), "rpc_address");
        assert_eq!(r.u16().unwrap(), TYPE_INET);
        assert_eq!(r.string().unwrap(), "tokens");
        r.skip_type().unwrap();
        assert_eq!(r.i32().unwrap(), 1);
        assert_eq!(r.bytes().unwrap(), Some(&b"hi"[..]));
        assert_eq!(r.bytes().unwrap(), Some(&[127, 0, 0, 1][..]));
        assert_eq!(r.bytes().unwrap(), None);
        assert!(r.rest().is_empty());
    }

    #[test]
    fn truncated_bodies_are_errors_not_panics() {
        let mut body = BytesMut::new();
        body.put_i32(RESULT_PREPARED);
        body.put_u16(40);
        assert!(
            response(
                frame(0x83, opcode::RESULT, body),
                None,
                &PreparedPatches::default(),
                IP
            )
            .is_err()
        );
    }
}
