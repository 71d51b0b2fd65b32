//! SSE event ids: the Kafka positions a client has seen, so any replica can resume it.
//!
//! `2.` + base64url(the log's id, 4 bytes big-endian; varint partition count; then per
//! partition varint(next offset + 1)), where 0 means "no position known". Everything below a
//! partition's next offset was delivered to the client, superseded by a newer fix it got, or
//! not for it (other tenant, filtered out); nothing at or above it was. The log's id is a
//! hash of the Kafka cluster's id and the topic's name ([`log_id`]): positions in another
//! cluster's or topic's log mean nothing here, and a resume from them gets a gap. (`1.` ids,
//! from before the log's id, are still read, as positions of this log.)

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

const VERSION: &str = "2.";
const VERSION_1: &str = "1.";
/// More partitions than any `locations` topic will have; bounds what a client can make us
/// allocate.
const MAX_PARTITIONS: u64 = 4096;

/// The id of a log: FNV-1a of the cluster's id and the topic's name.
pub fn log_id(cluster_id: &str, topic: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in cluster_id.bytes().chain([b'/']).chain(topic.bytes()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Per partition, the next offset (or `-1`: unknown), in log `log`.
pub fn encode(log: u32, next: &[i64]) -> String {
    let mut buf = Vec::with_capacity(6 + next.len() * 4);
    buf.extend_from_slice(&log.to_be_bytes());
    varint(&mut buf, next.len() as u64);
    for &o in next {
        varint(&mut buf, (o.max(-1) + 1) as u64);
    }
    let mut s = String::with_capacity(VERSION.len() + buf.len() * 4 / 3 + 4);
    s.push_str(VERSION);
    URL_SAFE_NO_PAD.encode_string(&buf, &mut s);
    s
}

/// An id's log (`None` for a `1.` id) and positions, or why it is not one of ours.
pub fn decode(id: &str) -> Result<(Option<u32>, Vec<i64>), String> {
    let (with_log, body) = match (id.strip_prefix(VERSION), id.strip_prefix(VERSION_1)) {
        (Some(body), _) => (true, body),
        (None, Some(body)) => (false, body),
        _ => return Err("event id of an unknown version".to_string()),
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(body.trim())
        .map_err(|e| format!("event id is not base64url: {e}"))?;
    let mut at = 0;
    let log = if with_log {
        let b: [u8; 4] = bytes
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or("truncated event id")?;
        at = 4;
        Some(u32::from_be_bytes(b))
    } else {
        None
    };
    let n = read_varint(&bytes, &mut at)?;
    if n > MAX_PARTITIONS {
        return Err(format!("event id names {n} partitions"));
    }
    let mut out = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let v = read_varint(&bytes, &mut at)?;
        let o = i64::try_from(v).map_err(|_| "offset out of range".to_string())? - 1;
        out.push(o);
    }
    if at != bytes.len() {
        return Err("trailing bytes in event id".into());
    }
    Ok((log, out))
}

fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn read_varint(bytes: &[u8], at: &mut usize) -> Result<u64, String> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*at).ok_or("truncated event id")?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint too long in event id".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips_and_stays_short() {
        let next: Vec<i64> = (0..48).map(|p| 1_000_000 + p * 7).collect();
        let log = log_id("cluster-a", "locations");
        let id = encode(log, &next);
        assert_eq!(decode(&id).expect("own id"), (Some(log), next));
        assert!(id.len() < 230, "{} chars", id.len());
        assert_eq!(
            decode(&encode(7, &[-1, 0, 5])).expect("own id"),
            (Some(7), vec![-1, 0, 5])
        );
        // Another cluster or topic: another log.
        assert_ne!(log, log_id("cluster-b", "locations"));
        assert_ne!(log, log_id("cluster-a", "locations-v2"));
        // A `1.` id (before logs had ids): its positions, no log.
        assert_eq!(decode("1.AwECAw").expect("v1 id"), (None, vec![0, 1, 2]));
    }

    #[test]
    fn rejects_foreign_ids() {
        for bad in [
            "", "42", "1.", "1.!!", "2.AAA", "1.gA", "3.AwECAw", "2.AAAA",
        ] {
            assert!(decode(bad).is_err(), "{bad:?} accepted");
        }
    }

    proptest! {
        #[test]
        fn any_positions_round_trip(next in proptest::collection::vec(-1i64..i64::MAX - 1, 0..300)) {
            prop_assert_eq!(decode(&encode(9, &next)).expect("own id"), (Some(9), next));
        }

        #[test]
        fn garbage_never_panics(s in ".{0,300}") {
            let _ = decode(&s);
            let _ = decode(&format!("1.{s}"));
            let _ = decode(&format!("2.{s}"));
        }
    }
}
