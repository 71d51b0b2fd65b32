use serde::{Deserialize, Serialize};

use crate::InvalidFix;

/// One GPS fix of one device, as it travels through Kafka (see `location.avsc`).
///
/// Identity is `(user_id, device_id, seq)`; `ts` is the event time in ms since the epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocationFix {
    pub tenant: String,
    pub user_id: String,
    pub device_id: String,
    pub seq: i64,
    pub ts: i64,
    pub lat: f64,
    pub lon: f64,
    #[serde(default)]
    pub accuracy_m: Option<f32>,
    #[serde(default)]
    pub altitude_m: Option<f64>,
    #[serde(default)]
    pub speed_mps: Option<f32>,
    #[serde(default)]
    pub heading_deg: Option<f32>,
    #[serde(default)]
    pub battery_pct: Option<i32>,
    #[serde(default)]
    pub activity: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
    pub received_at: i64,
}

/// A fix read in place: its strings borrow the bytes it was decoded from. Readers that keep
/// few of the fixes they decode, or store them their own way (the export's table), take this
/// instead of a [`LocationFix`] and allocate nothing per field. Serializes as a `LocationFix`
/// does.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FixRef<'a> {
    pub tenant: &'a str,
    pub user_id: &'a str,
    pub device_id: &'a str,
    pub seq: i64,
    pub ts: i64,
    pub lat: f64,
    pub lon: f64,
    pub accuracy_m: Option<f32>,
    pub altitude_m: Option<f64>,
    pub speed_mps: Option<f32>,
    pub heading_deg: Option<f32>,
    pub battery_pct: Option<i32>,
    pub activity: Option<&'a str>,
    pub source: Option<&'a str>,
    pub received_at: i64,
}

impl FixRef<'_> {
    /// The owned fix.
    pub fn to_fix(&self) -> LocationFix {
        LocationFix {
            tenant: self.tenant.to_string(),
            user_id: self.user_id.to_string(),
            device_id: self.device_id.to_string(),
            seq: self.seq,
            ts: self.ts,
            lat: self.lat,
            lon: self.lon,
            accuracy_m: self.accuracy_m,
            altitude_m: self.altitude_m,
            speed_mps: self.speed_mps,
            heading_deg: self.heading_deg,
            battery_pct: self.battery_pct,
            activity: self.activity.map(str::to_string),
            source: self.source.map(str::to_string),
            received_at: self.received_at,
        }
    }
}

impl LocationFix {
    /// This fix as a [`FixRef`].
    pub fn as_fix_ref(&self) -> FixRef<'_> {
        FixRef {
            tenant: &self.tenant,
            user_id: &self.user_id,
            device_id: &self.device_id,
            seq: self.seq,
            ts: self.ts,
            lat: self.lat,
            lon: self.lon,
            accuracy_m: self.accuracy_m,
            altitude_m: self.altitude_m,
            speed_mps: self.speed_mps,
            heading_deg: self.heading_deg,
            battery_pct: self.battery_pct,
            activity: self.activity.as_deref(),
            source: self.source.as_deref(),
            received_at: self.received_at,
        }
    }
}

/// Plausibility bounds applied by [`LocationFix::validate`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FixLimits {
    /// How far in the future an event time may be (device clock skew), ms.
    pub max_future_ms: i64,
    /// How old an event time may be (offline buffering), ms.
    pub max_age_ms: i64,
    /// Longest tenant / user / device id, bytes.
    pub max_id_len: usize,
}

impl Default for FixLimits {
    fn default() -> Self {
        FixLimits {
            max_future_ms: 5 * 60 * 1000,
            max_age_ms: 7 * 24 * 3600 * 1000,
            max_id_len: 128,
        }
    }
}

fn range(field: &'static str, value: f64, min: f64, max: f64) -> Result<(), InvalidFix> {
    if !value.is_finite() {
        return Err(InvalidFix::NotFinite { field });
    }
    if value < min || value > max {
        return Err(InvalidFix::OutOfRange {
            field,
            value,
            min,
            max,
        });
    }
    Ok(())
}

/// Whether `c` may appear in a tenant, user or device id: ASCII letters, digits and `. _ ~ - @`.
/// Ids become Redis keys (`:`-separated), URL path segments, MQTT topic levels, metric-free log
/// fields and dashboard text; this set is safe in all of them, so no id can be ambiguous in a
/// key or turn into markup.
pub fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '~' | '-' | '@')
}

/// The longest tenant, user or device id a consuming stage takes from Kafka, bytes; the
/// bridge's `max_id_len` may not be set above it. Every id of this size fits every store's key
/// limit (Cassandra's partition key is at most 65,535 bytes).
pub const MAX_ID_LEN: usize = 1024;

/// How far in the future a consuming stage takes an event time, ms (one day); the bridge's
/// `max_future_ms` may not be set above it. Cassandra and Scylla write each row at its event
/// time (`USING TIMESTAMP`), and Scylla refuses timestamps more than three days ahead.
pub const MAX_FUTURE_MS: i64 = 24 * 3600 * 1000;

/// What a consuming stage allows beyond [`MAX_FUTURE_MS`], ms (an hour): its clock may be
/// behind the bridge's that admitted the fix.
pub const CLOCK_SKEW_MS: i64 = 3600 * 1000;

/// How old an event time a bridge may take, ms (ten years): `max_age_ms` may not be set above
/// it, so no admitted fix is from before 1970, which a consuming stage refuses.
pub const MAX_AGE_MS: i64 = 10 * 365 * 24 * 3600 * 1000;

impl LocationFix {
    /// Checks required ids (non-empty, at most `max_id_len` bytes, only [`is_id_char`]s),
    /// coordinate and measurement ranges, and event time against `now_ms` (the receive time).
    pub fn validate(&self, limits: &FixLimits, now_ms: i64) -> Result<(), InvalidFix> {
        self.check_fields(limits.max_id_len)?;
        let skew = self.ts.saturating_sub(now_ms);
        if skew > limits.max_future_ms {
            return Err(InvalidFix::InFuture {
                ts: self.ts,
                skew_ms: skew,
                max_ms: limits.max_future_ms,
            });
        }
        if skew.saturating_neg() > limits.max_age_ms {
            return Err(InvalidFix::TooOld {
                ts: self.ts,
                age_ms: skew.saturating_neg(),
                max_ms: limits.max_age_ms,
            });
        }
        Ok(())
    }

    /// What a consuming stage checks of a fix it read from Kafka, where any producer may have
    /// written it: the field checks of [`LocationFix::validate`] with ids of at most
    /// [`MAX_ID_LEN`] bytes, and event and receive times from 1970 on and at most
    /// [`MAX_FUTURE_MS`] + [`CLOCK_SKEW_MS`] ahead of now (no age limit: a replay reads fixes of
    /// any age). A host clock before 1970 skips the look ahead rather than refuse every fix.
    pub fn check_consumed(&self) -> Result<(), InvalidFix> {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        self.check_consumed_at(now_ms)
    }

    fn check_consumed_at(&self, now_ms: Option<i64>) -> Result<(), InvalidFix> {
        self.check_fields(MAX_ID_LEN)?;
        let max_ms = MAX_FUTURE_MS + CLOCK_SKEW_MS;
        for (field, t) in [("ts", self.ts), ("received_at", self.received_at)] {
            if t < 0 {
                return Err(InvalidFix::BeforeEpoch { field, ts: t });
            }
            let skew_ms = now_ms.map_or(0, |now_ms| t.saturating_sub(now_ms));
            if skew_ms > max_ms {
                return Err(InvalidFix::InFuture {
                    ts: t,
                    skew_ms,
                    max_ms,
                });
            }
        }
        Ok(())
    }

    fn check_fields(&self, max_id_len: usize) -> Result<(), InvalidFix> {
        for (field, v) in [
            ("tenant", &self.tenant),
            ("user_id", &self.user_id),
            ("device_id", &self.device_id),
        ] {
            if v.is_empty() {
                return Err(InvalidFix::Missing { field });
            }
            if v.len() > max_id_len {
                return Err(InvalidFix::TooLong {
                    field,
                    len: v.len(),
                    max: max_id_len,
                });
            }
            if let Some((at, found)) = v.char_indices().find(|(_, c)| !is_id_char(*c)) {
                return Err(InvalidFix::BadId { field, found, at });
            }
        }
        if self.seq < 0 {
            return Err(InvalidFix::NegativeSeq(self.seq));
        }
        range("lat", self.lat, -90.0, 90.0)?;
        range("lon", self.lon, -180.0, 180.0)?;
        if let Some(v) = self.accuracy_m {
            range("accuracy_m", v.into(), 0.0, 1.0e6)?;
        }
        if let Some(v) = self.altitude_m {
            range("altitude_m", v, -12_000.0, 100_000.0)?;
        }
        if let Some(v) = self.speed_mps {
            range("speed_mps", v.into(), 0.0, 1_000.0)?;
        }
        if let Some(v) = self.heading_deg {
            range("heading_deg", v.into(), 0.0, 360.0)?;
        }
        if let Some(v) = self.battery_pct {
            range("battery_pct", v.into(), 0.0, 100.0)?;
        }
        for (field, v) in [("activity", &self.activity), ("source", &self.source)] {
            if let Some(v) = v
                && v.len() > max_id_len
            {
                return Err(InvalidFix::TooLong {
                    field,
                    len: v.len(),
                    max: max_id_len,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn fix() -> LocationFix {
        LocationFix {
            tenant: "acme".into(),
            user_id: "u1".into(),
            device_id: "d1".into(),
            seq: 1,
            ts: 1_000_000,
            lat: 52.5,
            lon: 13.4,
            accuracy_m: Some(5.0),
            altitude_m: None,
            speed_mps: Some(1.5),
            heading_deg: Some(359.0),
            battery_pct: Some(80),
            activity: Some("walking".into()),
            source: None,
            received_at: 1_000_100,
        }
    }

    #[test]
    fn what_the_bridge_admits_a_consuming_stage_takes() {
        // The bridge's loosest settings: ids of MAX_ID_LEN bytes, the whole future and age allowed.
        let l = FixLimits {
            max_future_ms: MAX_FUTURE_MS,
            max_age_ms: MAX_AGE_MS,
            max_id_len: MAX_ID_LEN,
        };
        let now = 1_800_000_000_000;
        let id = "a".repeat(MAX_ID_LEN);
        for f in [
            fix(),
            LocationFix {
                tenant: id.clone(),
                user_id: id.clone(),
                device_id: id.clone(),
                activity: Some(id.clone()),
                source: Some(id.clone()),
                ..fix()
            },
            LocationFix {
                lat: -90.0,
                lon: 180.0,
                accuracy_m: Some(1.0e6),
                altitude_m: Some(-12_000.0),
                speed_mps: Some(0.0),
                heading_deg: Some(360.0),
                battery_pct: Some(100),
                seq: 0,
                ..fix()
            },
        ] {
            for ts in [now + MAX_FUTURE_MS, now - MAX_AGE_MS, now] {
                let f = LocationFix { ts, ..f.clone() };
                f.validate(&l, now).unwrap();
                f.check_consumed_at(Some(now)).unwrap();
            }
        }
    }

    #[test]
    fn a_consumed_fix_is_checked_for_its_fields_and_a_sane_time_not_its_age() {
        // A replay reads fixes of any age.
        LocationFix { ts: 0, ..fix() }.check_consumed().unwrap();
        let now = 1_800_000_000_000;
        // A stage's clock an hour behind the bridge's still takes the bridge's latest fix.
        let latest = LocationFix {
            ts: now + MAX_FUTURE_MS + CLOCK_SKEW_MS,
            received_at: now + CLOCK_SKEW_MS,
            ..fix()
        };
        latest.check_consumed_at(Some(now)).unwrap();
        for ts in [
            -1,
            i64::MIN,
            now + MAX_FUTURE_MS + CLOCK_SKEW_MS + 1,
            i64::MAX,
        ] {
            for f in [
                LocationFix { ts, ..fix() },
                LocationFix {
                    received_at: ts,
                    ..fix()
                },
            ] {
                let e = f.check_consumed_at(Some(now)).unwrap_err();
                assert!(
                    matches!(e.reason(), "ts_too_old" | "ts_in_future"),
                    "{ts}: {e}"
                );
            }
        }
        // No usable clock: the look ahead is skipped, not every fix refused.
        LocationFix {
            ts: i64::MAX,
            ..fix()
        }
        .check_consumed_at(None)
        .unwrap();
        let long = LocationFix {
            user_id: "u".repeat(MAX_ID_LEN),
            ..fix()
        };
        long.check_consumed().unwrap();
        for (bad, reason) in [
            (
                LocationFix {
                    user_id: "u".repeat(MAX_ID_LEN + 1),
                    ..fix()
                },
                "field_too_long",
            ),
            (
                LocationFix {
                    lon: 500.0,
                    ..fix()
                },
                "out_of_range",
            ),
            (
                LocationFix {
                    lat: f64::NAN,
                    ..fix()
                },
                "out_of_range",
            ),
            (
                LocationFix {
                    tenant: "a:b".into(),
                    ..fix()
                },
                "bad_id",
            ),
            (
                LocationFix {
                    device_id: String::new(),
                    ..fix()
                },
                "missing_field",
            ),
        ] {
            assert_eq!(bad.check_consumed().unwrap_err().reason(), reason);
        }
    }

    #[test]
    fn ids_outside_the_safe_set_are_refused() {
        let l = FixLimits::default();
        for bad in [
            "a:b",
            "<img src=x onerror=alert(1)>",
            "a\"b",
            "a b",
            "a/b",
            "é",
            "a\u{0}",
        ] {
            for f in [
                LocationFix {
                    user_id: bad.into(),
                    ..fix()
                },
                LocationFix {
                    tenant: bad.into(),
                    ..fix()
                },
                LocationFix {
                    device_id: bad.into(),
                    ..fix()
                },
            ] {
                let e = f.validate(&l, 1_000_100).unwrap_err();
                assert_eq!(e.reason(), "bad_id", "{bad:?}: {e}");
            }
        }
        for good in ["u-1", "alice@acme.example", "Truck_07.A~b"] {
            let f = LocationFix {
                user_id: good.into(),
                ..fix()
            };
            f.validate(&l, 1_000_100).unwrap();
        }
    }

    #[test]
    fn a_plausible_fix_is_valid() {
        fix().validate(&FixLimits::default(), 1_000_100).unwrap();
    }

    #[test]
    fn each_bound_is_enforced() {
        let l = FixLimits::default();
        let now = 1_000_100;
        let cases: Vec<(LocationFix, &str)> = vec![
            (LocationFix { lat: 90.5, ..fix() }, "out_of_range"),
            (
                LocationFix {
                    lon: -180.1,
                    ..fix()
                },
                "out_of_range",
            ),
            (
                LocationFix {
                    lat: f64::NAN,
                    ..fix()
                },
                "out_of_range",
            ),
            (
                LocationFix {
                    user_id: "".into(),
                    ..fix()
                },
                "missing_field",
            ),
            (
                LocationFix {
                    device_id: "x".repeat(200),
                    ..fix()
                },
                "field_too_long",
            ),
            (
                LocationFix {
                    speed_mps: Some(-1.0),
                    ..fix()
                },
                "out_of_range",
            ),
            (
                LocationFix {
                    accuracy_m: Some(-0.1),
                    ..fix()
                },
                "out_of_range",
            ),
            (
                LocationFix {
                    heading_deg: Some(361.0),
                    ..fix()
                },
                "out_of_range",
            ),
            (
                LocationFix {
                    battery_pct: Some(101),
                    ..fix()
                },
                "out_of_range",
            ),
            (LocationFix { seq: -1, ..fix() }, "bad_seq"),
            (
                LocationFix {
                    ts: now + l.max_future_ms + 1,
                    ..fix()
                },
                "ts_in_future",
            ),
            (
                LocationFix {
                    ts: now - l.max_age_ms - 1,
                    ..fix()
                },
                "ts_too_old",
            ),
        ];
        for (f, reason) in cases {
            let err = f.validate(&l, now).unwrap_err();
            assert_eq!(err.reason(), reason, "{err}");
        }
    }
}
