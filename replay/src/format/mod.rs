//! Export formats. Every writer takes fixes in the export's order and writes them to an
//! [`Output`]: a file is written beside its final name and renamed into place only when
//! complete, so an interrupted export never leaves a file that looks whole.

mod csv;
mod geojson;
mod ndjson;
mod parquet;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use std::ops::Range;
use std::sync::Arc;

use crate::{ReplayError, Sorted};

/// `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Ndjson,
    Csv,
    Geojson,
    Parquet,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Format, String> {
        match s {
            "ndjson" | "jsonl" => Ok(Format::Ndjson),
            "csv" => Ok(Format::Csv),
            "geojson" => Ok(Format::Geojson),
            "parquet" => Ok(Format::Parquet),
            _ => Err(format!(
                "unknown format '{s}': ndjson, csv, geojson or parquet"
            )),
        }
    }
}

/// Writes fixes in one format.
pub trait FixWriter: Send {
    /// Writes the fixes at `range` of `fixes`' order. An export writes consecutive ranges,
    /// from the first fix to the last.
    fn write(&mut self, fixes: &Arc<Sorted>, range: Range<usize>) -> Result<(), ReplayError>;
    /// Completes the output (footer, flush). The output is not complete without it.
    fn finish(self: Box<Self>) -> Result<Box<dyn Write + Send>, ReplayError>;
}

/// A writer of `format` into `out`.
pub fn writer(
    format: Format,
    out: Box<dyn Write + Send>,
    row_group_rows: usize,
) -> Result<Box<dyn FixWriter>, ReplayError> {
    Ok(match format {
        Format::Ndjson => Box::new(ndjson::Ndjson::new(out)),
        Format::Csv => Box::new(csv::Csv::new(out)?),
        Format::Geojson => Box::new(geojson::Geojson::new(out)?),
        Format::Parquet => Box::new(parquet::Parquet::new(out, row_group_rows)?),
    })
}

/// Where an export goes: stdout, or a file made complete only by [`Output::commit`].
#[derive(Debug)]
pub enum Output {
    Stdout,
    File { path: PathBuf, partial: PathBuf },
}

impl Output {
    /// `-` is stdout. A file is written as `<name>.partial` until committed.
    pub fn open(arg: &str) -> Result<(Output, Box<dyn Write + Send>), ReplayError> {
        if arg == "-" {
            return Ok((
                Output::Stdout,
                Box::new(BufWriter::with_capacity(1 << 16, std::io::stdout())),
            ));
        }
        let path = PathBuf::from(arg);
        let mut name = path
            .file_name()
            .ok_or_else(|| ReplayError::Invalid(format!("--out '{arg}' is not a file name")))?
            .to_os_string();
        name.push(".partial");
        let partial = path.with_file_name(name);
        let file = File::create(&partial)?;
        Ok((
            Output::File { path, partial },
            Box::new(BufWriter::with_capacity(1 << 20, file)),
        ))
    }

    /// Makes a file output complete (synced, renamed into place).
    pub fn commit(&self, mut w: Box<dyn Write + Send>) -> Result<(), ReplayError> {
        w.flush()?;
        drop(w);
        if let Output::File { path, partial } = self {
            File::open(partial)?.sync_all()?;
            std::fs::rename(partial, path)?;
        }
        Ok(())
    }

    /// Removes an incomplete file output (on drop; a committed one has no `.partial` left).
    fn abandon(&self) {
        if let Output::File { partial, .. } = self {
            let _ = std::fs::remove_file(partial);
        }
    }

    pub fn path(&self) -> Option<&Path> {
        match self {
            Output::Stdout => None,
            Output::File { path, .. } => Some(path),
        }
    }
}

/// An output dropped before its commit (an error, Ctrl-C, a panic while writing) leaves no
/// `.partial` file behind; after the commit there is none to remove.
impl Drop for Output {
    fn drop(&mut self) {
        self.abandon();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_complete_only_once_committed_and_never_left_partial() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.ndjson");
        let arg = path.to_str().unwrap();
        let partial = dir.path().join("out.ndjson.partial");

        // Dropped mid-write, as on an error or a panic while writing: nothing is left.
        let (output, mut w) = Output::open(arg).unwrap();
        w.write_all(b"{}\n").unwrap();
        assert!(partial.exists() && !path.exists());
        drop(w);
        drop(output);
        assert!(!partial.exists() && !path.exists());

        let (output, mut w) = Output::open(arg).unwrap();
        w.write_all(b"{}\n").unwrap();
        output.commit(w).unwrap();
        drop(output);
        assert!(!partial.exists());
        assert_eq!(std::fs::read(&path).unwrap(), b"{}\n");
    }
}
