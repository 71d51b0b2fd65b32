//! From an MQTT topic and payload to validated fixes, or to the reason they were rejected.
//! Pure functions: no I/O, so every kind of bad input is unit-tested here.

use locus_schemas::{FixLimits, LocationFix};
use serde::Deserialize;

/// A topic template such as `locus/{tenant}/{user_id}/location`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicTemplate {
    levels: Vec<Level>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Literal(String),
    Tenant,
    User,
}

impl TopicTemplate {
    pub fn parse(template: &str) -> Result<TopicTemplate, String> {
        let mut levels = vec![];
        for part in template.split('/') {
            levels.push(match part {
                "{tenant}" => Level::Tenant,
                "{user_id}" => Level::User,
                p if p.contains(['{', '}', '+', '#']) => {
                    return Err(format!(
                        "bridge.topic_template level '{p}' is not a literal, {{tenant}} or {{user_id}}"
                    ));
                }
                p => Level::Literal(p.to_string()),
            });
        }
        let count = |l: &Level| levels.iter().filter(|x| *x == l).count();
        if count(&Level::Tenant) != 1 || count(&Level::User) != 1 {
            return Err(format!(
                "bridge.topic_template '{template}' must contain {{tenant}} and {{user_id}} exactly once, each a whole level"
            ));
        }
        Ok(TopicTemplate { levels })
    }

    /// The subscription filter: placeholders become `+`.
    pub fn filter(&self) -> String {
        self.levels
            .iter()
            .map(|l| match l {
                Level::Literal(s) => s.as_str(),
                _ => "+",
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    /// A concrete topic for `tenant` and `user` (the device side).
    pub fn topic(&self, tenant: &str, user: &str) -> String {
        self.levels
            .iter()
            .map(|l| match l {
                Level::Literal(s) => s.as_str(),
                Level::Tenant => tenant,
                Level::User => user,
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    /// `(tenant, user_id)` of a concrete topic.
    pub fn extract<'a>(&self, topic: &'a str) -> Result<(&'a str, &'a str), Rejection> {
        let parts: Vec<&str> = topic.split('/').collect();
        let bad = || {
            Rejection::new(
                "bad_topic",
                format!("topic '{topic}' does not match the template"),
            )
        };
        if parts.len() != self.levels.len() {
            return Err(bad());
        }
        let (mut tenant, mut user) = ("", "");
        for (level, part) in self.levels.iter().zip(parts) {
            match level {
                Level::Literal(s) if s != part => return Err(bad()),
                Level::Literal(_) => {}
                Level::Tenant => tenant = part,
                Level::User => user = part,
            }
        }
        if tenant.is_empty() || user.is_empty() {
            return Err(bad());
        }
        Ok((tenant, user))
    }
}

/// Why a message (or one fix of a batch) was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Fixed label: metrics label and DLQ `locus-reason` header.
    pub reason: &'static str,
    /// Human detail: DLQ `locus-error` header and logs.
    pub detail: String,
}

impl Rejection {
    pub fn new(reason: &'static str, detail: impl Into<String>) -> Rejection {
        Rejection {
            reason,
            detail: detail.into(),
        }
    }
}

/// A fix as a device sends it in JSON. Unknown fields are refused: a typo must not silently
/// drop data.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceFix {
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    user_id: Option<String>,
    device_id: String,
    seq: i64,
    /// Event time, ms since the Unix epoch (UTC).
    ts: i64,
    lat: f64,
    lon: f64,
    #[serde(default)]
    accuracy_m: Option<f32>,
    #[serde(default)]
    altitude_m: Option<f64>,
    #[serde(default)]
    speed_mps: Option<f32>,
    #[serde(default)]
    heading_deg: Option<f32>,
    #[serde(default)]
    battery_pct: Option<i32>,
    #[serde(default)]
    activity: Option<String>,
    #[serde(default)]
    source: Option<String>,
}

fn json_rejection(e: &serde_json::Error) -> Rejection {
    let msg = e.to_string();
    let reason = if msg.starts_with("unknown field") {
        "unknown_field"
    } else if msg.starts_with("missing field") {
        "missing_field"
    } else if e.is_data() {
        "bad_field_type"
    } else {
        "malformed_json"
    };
    Rejection::new(reason, msg)
}

/// What one message yields: the fixes to produce, and the batch elements rejected.
#[derive(Debug, Default, PartialEq)]
pub struct Parsed {
    pub fixes: Vec<LocationFix>,
    pub rejected: Vec<(usize, Rejection)>,
}

/// Checks a fix against the topic it arrived on and the plausibility limits.
pub fn check_fix(
    fix: &LocationFix,
    tenant: &str,
    user: &str,
    now_ms: i64,
    limits: &FixLimits,
) -> Result<(), Rejection> {
    if fix.tenant != tenant {
        return Err(Rejection::new(
            "tenant_mismatch",
            format!(
                "payload tenant '{}' differs from the topic's '{tenant}'",
                fix.tenant
            ),
        ));
    }
    if fix.user_id != user {
        return Err(Rejection::new(
            "user_mismatch",
            format!(
                "payload user_id '{}' differs from the topic's '{user}'",
                fix.user_id
            ),
        ));
    }
    fix.validate(limits, now_ms)
        .map_err(|e| Rejection::new(e.reason(), e.to_string()))
}

fn to_fix(d: DeviceFix, tenant: &str, user: &str, now_ms: i64) -> LocationFix {
    LocationFix {
        tenant: d.tenant.unwrap_or_else(|| tenant.to_string()),
        user_id: d.user_id.unwrap_or_else(|| user.to_string()),
        device_id: d.device_id,
        seq: d.seq,
        ts: d.ts,
        lat: d.lat,
        lon: d.lon,
        accuracy_m: d.accuracy_m,
        altitude_m: d.altitude_m,
        speed_mps: d.speed_mps,
        heading_deg: d.heading_deg,
        battery_pct: d.battery_pct,
        activity: d.activity,
        source: d.source,
        received_at: now_ms,
    }
}

/// Parses a JSON payload: one fix object, or an array of them (a phone flushing what it
/// buffered offline). Whole-message problems are an `Err`; a bad element of a batch is
/// listed in `rejected` while the good ones go on.
pub fn parse_payload(
    payload: &[u8],
    tenant: &str,
    user: &str,
    now_ms: i64,
    limits: &FixLimits,
    max_batch_len: usize,
) -> Result<Parsed, Rejection> {
    let first = payload.iter().find(|b| !b.is_ascii_whitespace());
    // Fast path: one well-formed fix, or a batch of them, parsed straight into the type.
    if first == Some(&b'{')
        && let Ok(d) = serde_json::from_slice::<DeviceFix>(payload)
    {
        let f = to_fix(d, tenant, user, now_ms);
        check_fix(&f, tenant, user, now_ms, limits)?;
        return Ok(Parsed {
            fixes: vec![f],
            rejected: vec![],
        });
    }
    let elements: Vec<serde_json::Value> = match first {
        None => return Err(Rejection::new("empty_payload", "the payload is empty")),
        Some(b'[') => {
            let v: Vec<serde_json::Value> =
                serde_json::from_slice(payload).map_err(|e| json_rejection(&e))?;
            if v.is_empty() {
                return Err(Rejection::new("empty_batch", "the batch holds no fix"));
            }
            if v.len() > max_batch_len {
                return Err(Rejection::new(
                    "batch_too_long",
                    format!(
                        "the batch holds {} fixes, more than the {max_batch_len} allowed",
                        v.len()
                    ),
                ));
            }
            v
        }
        Some(b'{') => vec![serde_json::from_slice(payload).map_err(|e| json_rejection(&e))?],
        Some(_) => {
            return Err(Rejection::new(
                "malformed_payload",
                "the payload is neither JSON (an object or an array) nor Confluent-framed Avro",
            ));
        }
    };
    let single = elements.len() == 1 && first == Some(&b'{');
    let mut out = Parsed::default();
    for (i, element) in elements.into_iter().enumerate() {
        let checked = serde_json::from_value::<DeviceFix>(element)
            .map_err(|e| json_rejection(&e))
            .map(|d| to_fix(d, tenant, user, now_ms))
            .and_then(|f| check_fix(&f, tenant, user, now_ms, limits).map(|_| f));
        match checked {
            Ok(f) => out.fixes.push(f),
            Err(r) if single => return Err(r),
            Err(r) => out.rejected.push((i, r)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_760_000_000_000;

    fn parse(p: &str) -> Result<Parsed, Rejection> {
        parse_payload(p.as_bytes(), "acme", "u1", NOW, &FixLimits::default(), 3)
    }

    fn ok_fix(seq: i64) -> String {
        format!(
            r#"{{"device_id":"d1","seq":{seq},"ts":{},"lat":52.5,"lon":13.4,"speed_mps":3.0}}"#,
            NOW - 1000
        )
    }

    #[test]
    fn template_round_trip() {
        let t = TopicTemplate::parse("locus/{tenant}/{user_id}/location").unwrap();
        assert_eq!(t.filter(), "locus/+/+/location");
        assert_eq!(t.topic("a", "b"), "locus/a/b/location");
        assert_eq!(t.extract("locus/a/b/location").unwrap(), ("a", "b"));
        assert_eq!(
            t.extract("locus/a/b/other").unwrap_err().reason,
            "bad_topic"
        );
        assert_eq!(
            t.extract("locus/a/location").unwrap_err().reason,
            "bad_topic"
        );
        assert!(TopicTemplate::parse("locus/{tenant}/location").is_err());
        assert!(TopicTemplate::parse("locus/+/{tenant}/{user_id}").is_err());
    }

    #[test]
    fn one_fix_and_a_batch() {
        let p = parse(&ok_fix(1)).unwrap();
        assert_eq!(p.fixes.len(), 1);
        assert_eq!(p.fixes[0].user_id, "u1");
        assert_eq!(p.fixes[0].tenant, "acme");
        assert_eq!(p.fixes[0].received_at, NOW);
        let p = parse(&format!("[{},{}]", ok_fix(1), ok_fix(2))).unwrap();
        assert_eq!(
            p.fixes.iter().map(|f| f.seq).collect::<Vec<_>>(),
            vec![1, 2]
        );
    }

    #[test]
    fn a_bad_element_does_not_sink_the_batch() {
        let bad = format!(
            r#"{{"device_id":"d1","seq":2,"ts":{},"lat":95.0,"lon":13.4}}"#,
            NOW
        );
        let p = parse(&format!("[{},{bad},{}]", ok_fix(1), ok_fix(3))).unwrap();
        assert_eq!(p.fixes.len(), 2);
        assert_eq!(p.rejected.len(), 1);
        assert_eq!(p.rejected[0].0, 1);
        assert_eq!(p.rejected[0].1.reason, "out_of_range");
    }

    #[test]
    fn every_kind_of_bad_input_has_a_reason() {
        let ts = NOW;
        let cases = [
            ("", "empty_payload"),
            ("hello", "malformed_payload"),
            ("{\"device_id\":", "malformed_json"),
            ("[]", "empty_batch"),
            (
                &format!("[{0},{0},{0},{0}]", ok_fix(1)) as &str,
                "batch_too_long",
            ),
            (
                &format!(r#"{{"device_id":"d","seq":1,"ts":{ts},"lat":1,"lon":2,"colour":"red"}}"#),
                "unknown_field",
            ),
            (
                &format!(r#"{{"device_id":"d","seq":1,"ts":{ts},"lat":1}}"#),
                "missing_field",
            ),
            (
                &format!(r#"{{"device_id":"d","seq":"one","ts":{ts},"lat":1,"lon":2}}"#),
                "bad_field_type",
            ),
            (
                &format!(r#"{{"device_id":"d","seq":1,"ts":{ts},"lat":1,"lon":200}}"#),
                "out_of_range",
            ),
            (
                &format!(
                    r#"{{"device_id":"d","seq":1,"ts":{ts},"lat":1,"lon":2,"heading_deg":400}}"#
                ),
                "out_of_range",
            ),
            (
                &format!(r#"{{"device_id":"d","seq":1,"ts":{ts},"lat":1,"lon":2,"speed_mps":-2}}"#),
                "out_of_range",
            ),
            (
                &format!(
                    r#"{{"device_id":"d","seq":1,"ts":{},"lat":1,"lon":2}}"#,
                    ts + 3_600_000
                ),
                "ts_in_future",
            ),
            (
                &format!(
                    r#"{{"device_id":"d","seq":1,"ts":{},"lat":1,"lon":2}}"#,
                    ts - 30 * 86_400_000
                ),
                "ts_too_old",
            ),
            (
                &format!(r#"{{"device_id":"","seq":1,"ts":{ts},"lat":1,"lon":2}}"#),
                "missing_field",
            ),
            (
                &format!(r#"{{"user_id":"u2","device_id":"d","seq":1,"ts":{ts},"lat":1,"lon":2}}"#),
                "user_mismatch",
            ),
            (
                &format!(
                    r#"{{"tenant":"evil","device_id":"d","seq":1,"ts":{ts},"lat":1,"lon":2}}"#
                ),
                "tenant_mismatch",
            ),
        ];
        for (payload, reason) in cases {
            let r = parse(payload).unwrap_err();
            assert_eq!(r.reason, reason, "{payload}: {}", r.detail);
        }
    }
}
