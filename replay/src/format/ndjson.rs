//! One JSON object a line, the fields of `location.avsc` (times in ms since the epoch).

use std::io::Write;

use locus_schemas::LocationFix;

use super::FixWriter;
use crate::ReplayError;

pub struct Ndjson {
    out: Box<dyn Write + Send>,
}

impl Ndjson {
    pub fn new(out: Box<dyn Write + Send>) -> Ndjson {
        Ndjson { out }
    }
}

impl FixWriter for Ndjson {
    fn write(&mut self, fix: LocationFix) -> Result<(), ReplayError> {
        serde_json::to_writer(&mut self.out, &fix).map_err(std::io::Error::from)?;
        self.out.write_all(b"\n")?;
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<Box<dyn Write + Send>, ReplayError> {
        Ok(self.out)
    }
}
