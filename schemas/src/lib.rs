//! The Locus data contract: `location.avsc`, the [`LocationFix`] type, its validation, and
//! the Avro codec in the Confluent wire format (magic byte, 4-byte schema id, Avro datum)
//! backed by a Schema Registry; and the config primitives every connector shares ([`Secret`],
//! [`tls`] client settings).

mod codec;
mod error;
mod fix;
mod secret;
pub mod tls;
pub mod wire;

pub use codec::{
    Codec, RegistryConfig, decode_with_schema, encode_with_schema, location_schema, value_subject,
};
pub use error::{CodecError, InvalidFix};
pub use fix::{
    CLOCK_SKEW_MS, FixLimits, FixRef, LocationFix, MAX_AGE_MS, MAX_FUTURE_MS, MAX_ID_LEN,
    is_id_char,
};
pub use secret::Secret;

/// The one header of every `locations` record: the fix's tenant, so that a consumer can pass
/// over another tenant's fixes without decoding them (the push stage does).
pub const TENANT_HEADER: &str = "locus-tenant";

/// The Avro schema of [`LocationFix`], as registered under `<topic>-value`.
pub const LOCATION_AVSC: &str = include_str!("../location.avsc");
