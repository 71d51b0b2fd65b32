//! One JSON object a line, the fields of `location.avsc` (times in ms since the epoch).

use std::io::Write;
use std::ops::Range;
use std::sync::Arc;

use super::FixWriter;
use crate::{ReplayError, Sorted};

pub struct Ndjson {
    out: Box<dyn Write + Send>,
}

impl Ndjson {
    pub fn new(out: Box<dyn Write + Send>) -> Ndjson {
        Ndjson { out }
    }
}

impl FixWriter for Ndjson {
    fn write(&mut self, fixes: &Arc<Sorted>, range: Range<usize>) -> Result<(), ReplayError> {
        for fix in fixes.iter(range) {
            serde_json::to_writer(&mut self.out, &fix).map_err(std::io::Error::from)?;
            self.out.write_all(b"\n")?;
        }
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<Box<dyn Write + Send>, ReplayError> {
        Ok(self.out)
    }
}
