//! The one fix builder of the tests: a plausible fix of `user` (device `<user>-phone`) taken
//! at `ts`; tests change what they need with struct update syntax.
#![allow(dead_code)]

use locus_schemas::LocationFix;

pub fn fix_at(tenant: &str, user: &str, seq: i64, ts: i64, lat: f64, lon: f64) -> LocationFix {
    LocationFix {
        tenant: tenant.into(),
        user_id: user.into(),
        device_id: format!("{user}-phone"),
        seq,
        ts,
        lat,
        lon,
        accuracy_m: Some(5.0),
        altitude_m: None,
        speed_mps: Some(1.5),
        heading_deg: None,
        battery_pct: Some(80),
        activity: None,
        source: None,
        received_at: ts,
    }
}
