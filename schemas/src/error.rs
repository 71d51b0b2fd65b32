/// Why bytes could not be turned into a [`crate::LocationFix`] or back.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("schema registry: {0}")]
    Registry(String),
    #[error("not in the Confluent wire format: {0}")]
    Framing(String),
    #[error("Avro payload does not decode: {0}")]
    Decode(String),
    #[error("Avro record does not match LocationFix: {0}")]
    Shape(String),
    #[error("cannot encode LocationFix: {0}")]
    Encode(String),
}

impl CodecError {
    /// A short, fixed label for metrics and DLQ headers.
    pub fn reason(&self) -> &'static str {
        match self {
            CodecError::Registry(_) => "registry",
            CodecError::Framing(_) => "framing",
            CodecError::Decode(_) => "avro_decode",
            CodecError::Shape(_) => "avro_shape",
            CodecError::Encode(_) => "avro_encode",
        }
    }
}

/// Why a fix is not a plausible GPS fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidFix {
    #[error("{field} is required and must not be empty")]
    Missing { field: &'static str },
    #[error("{field} is {len} bytes, more than the {max} allowed")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{field} = {value} is out of range [{min}, {max}]")]
    OutOfRange {
        field: &'static str,
        value: f64,
        min: f64,
        max: f64,
    },
    #[error("{field} is not a finite number")]
    NotFinite { field: &'static str },
    #[error("event time {ts} is {skew_ms} ms in the future (at most {max_ms} allowed)")]
    InFuture { ts: i64, skew_ms: i64, max_ms: i64 },
    #[error("event time {ts} is {age_ms} ms in the past (at most {max_ms} allowed)")]
    TooOld { ts: i64, age_ms: i64, max_ms: i64 },
    #[error("{field} {ts} is before 1970")]
    BeforeEpoch { field: &'static str, ts: i64 },
    #[error("seq must be >= 0, got {0}")]
    NegativeSeq(i64),
    #[error("{field} may hold only letters, digits and . _ ~ - @ (found {found:?} at byte {at})")]
    BadId {
        field: &'static str,
        found: char,
        at: usize,
    },
}

impl InvalidFix {
    /// A short, fixed label for metrics and DLQ headers.
    pub fn reason(&self) -> &'static str {
        match self {
            InvalidFix::Missing { .. } => "missing_field",
            InvalidFix::TooLong { .. } => "field_too_long",
            InvalidFix::OutOfRange { .. } | InvalidFix::NotFinite { .. } => "out_of_range",
            InvalidFix::InFuture { .. } => "ts_in_future",
            InvalidFix::TooOld { .. } | InvalidFix::BeforeEpoch { .. } => "ts_too_old",
            InvalidFix::NegativeSeq(_) => "bad_seq",
            InvalidFix::BadId { .. } => "bad_id",
        }
    }
}
