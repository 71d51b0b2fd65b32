//! A GeoJSON FeatureCollection (RFC 7946): one Point feature a fix, `[lon, lat(, altitude)]`,
//! every other field a property (times in ms and as RFC 3339).

use std::io::Write;
use std::ops::Range;
use std::sync::Arc;

use locus_schemas::FixRef;
use serde_json::json;

use super::FixWriter;
use crate::time::format_time;
use crate::{ReplayError, Sorted};

pub struct Geojson {
    out: Box<dyn Write + Send>,
    first: bool,
}

impl Geojson {
    pub fn new(mut out: Box<dyn Write + Send>) -> Result<Geojson, ReplayError> {
        out.write_all(b"{\"type\":\"FeatureCollection\",\"features\":[\n")?;
        Ok(Geojson { out, first: true })
    }

    fn feature(&mut self, f: FixRef<'_>) -> Result<(), ReplayError> {
        let coordinates = match f.altitude_m {
            Some(alt) => json!([f.lon, f.lat, alt]),
            None => json!([f.lon, f.lat]),
        };
        let feature = json!({
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": coordinates},
            "properties": {
                "tenant": f.tenant, "user_id": f.user_id, "device_id": f.device_id,
                "seq": f.seq, "ts": f.ts, "time": format_time(f.ts),
                "accuracy_m": f.accuracy_m, "speed_mps": f.speed_mps,
                "heading_deg": f.heading_deg, "battery_pct": f.battery_pct,
                "activity": f.activity, "source": f.source, "received_at": f.received_at,
            }
        });
        if !self.first {
            self.out.write_all(b",\n")?;
        }
        self.first = false;
        serde_json::to_writer(&mut self.out, &feature).map_err(std::io::Error::from)?;
        Ok(())
    }
}

impl FixWriter for Geojson {
    fn write(&mut self, fixes: &Arc<Sorted>, range: Range<usize>) -> Result<(), ReplayError> {
        for f in fixes.iter(range) {
            self.feature(f)?;
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<Box<dyn Write + Send>, ReplayError> {
        self.out.write_all(b"\n]}\n")?;
        Ok(self.out)
    }
}
