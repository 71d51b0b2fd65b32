//! RFC 4180 CSV with a header; event and receive times as RFC 3339 (UTC, ms), empty cells
//! for absent optional fields.

use std::io::Write;
use std::ops::Range;
use std::sync::Arc;

use locus_schemas::FixRef;

use super::FixWriter;
use crate::time::format_time;
use crate::{ReplayError, Sorted};

pub const HEADER: &str = "tenant,user_id,device_id,seq,ts,lat,lon,accuracy_m,altitude_m,speed_mps,heading_deg,battery_pct,activity,source,received_at\n";

pub struct Csv {
    out: Box<dyn Write + Send>,
    line: String,
}

impl Csv {
    pub fn new(mut out: Box<dyn Write + Send>) -> Result<Csv, ReplayError> {
        out.write_all(HEADER.as_bytes())?;
        Ok(Csv {
            out,
            line: String::with_capacity(256),
        })
    }
}

/// A field quoted when it holds a comma, a quote or a line break (quotes doubled).
fn field(line: &mut String, s: &str) {
    if s.contains([',', '"', '\n', '\r']) {
        line.push('"');
        line.push_str(&s.replace('"', "\"\""));
        line.push('"');
    } else {
        line.push_str(s);
    }
}

fn opt<T: ToString>(line: &mut String, v: Option<T>) {
    if let Some(v) = v {
        line.push_str(&v.to_string());
    }
}

impl Csv {
    fn line(&mut self, f: FixRef<'_>) -> Result<(), ReplayError> {
        let l = &mut self.line;
        l.clear();
        field(l, f.tenant);
        l.push(',');
        field(l, f.user_id);
        l.push(',');
        field(l, f.device_id);
        l.push(',');
        l.push_str(&f.seq.to_string());
        l.push(',');
        l.push_str(&format_time(f.ts));
        l.push(',');
        l.push_str(&f.lat.to_string());
        l.push(',');
        l.push_str(&f.lon.to_string());
        l.push(',');
        opt(l, f.accuracy_m);
        l.push(',');
        opt(l, f.altitude_m);
        l.push(',');
        opt(l, f.speed_mps);
        l.push(',');
        opt(l, f.heading_deg);
        l.push(',');
        opt(l, f.battery_pct);
        l.push(',');
        if let Some(a) = f.activity {
            field(l, a);
        }
        l.push(',');
        if let Some(s) = f.source {
            field(l, s);
        }
        l.push(',');
        l.push_str(&format_time(f.received_at));
        l.push('\n');
        self.out.write_all(l.as_bytes())?;
        Ok(())
    }
}

impl FixWriter for Csv {
    fn write(&mut self, fixes: &Arc<Sorted>, range: Range<usize>) -> Result<(), ReplayError> {
        for f in fixes.iter(range) {
            self.line(f)?;
        }
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<Box<dyn Write + Send>, ReplayError> {
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_only_what_needs_it() {
        let mut l = String::new();
        field(&mut l, "plain");
        l.push(',');
        field(&mut l, "a,\"b\"\nc");
        assert_eq!(l, "plain,\"a,\"\"b\"\"\nc\"");
    }
}
