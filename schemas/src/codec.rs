use std::collections::HashMap;
use std::sync::{Once, OnceLock, RwLock};
use std::time::Duration;

use apache_avro::Schema;
use schema_registry_converter::async_impl::easy_avro::{EasyAvroDecoder, EasyAvroEncoder};
use schema_registry_converter::async_impl::schema_registry::{
    SrSettings, get_schema_by_id, post_schema,
};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};
use serde::{Deserialize, Serialize};

use crate::{CodecError, LOCATION_AVSC, LocationFix, Secret, wire};

/// Largest Avro allocation a decoder may make for one value. Fixes are a few hundred bytes;
/// this stops a hostile length prefix from allocating hundreds of MiB.
const MAX_AVRO_ALLOCATION: usize = 1 << 20;

/// `[registry]`: where the Confluent-compatible Schema Registry is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Base URL of the registry.
    #[serde(default = "default_url")]
    pub url: String,
    /// Basic-auth user (Confluent Cloud API key); empty: no auth.
    #[serde(default)]
    pub username: String,
    /// Basic-auth password (Confluent Cloud API secret).
    #[serde(default)]
    pub password: Secret,
    /// Timeout of one registry request, ms.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_url() -> String {
    "http://127.0.0.1:8081".into()
}
fn default_timeout_ms() -> u64 {
    5_000
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            url: default_url(),
            username: String::new(),
            password: Secret::default(),
            timeout_ms: default_timeout_ms(),
        }
    }
}

impl RegistryConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(format!(
                "registry.url '{}' must start with http:// or https://",
                self.url
            ));
        }
        if self.timeout_ms == 0 {
            return Err("registry.timeout_ms must be > 0".into());
        }
        Ok(())
    }

    fn settings(&self) -> Result<SrSettings, CodecError> {
        self.validate().map_err(CodecError::Registry)?;
        let mut b = SrSettings::new_builder(self.url.trim_end_matches('/').to_string());
        b.set_timeout(Duration::from_millis(self.timeout_ms));
        if !self.username.is_empty() {
            b.set_basic_authorization(&self.username, Some(self.password.expose()));
        }
        b.build().map_err(registry_error)
    }
}

/// The registry subject of a topic's values (Confluent's TopicNameStrategy).
pub fn value_subject(topic: &str) -> String {
    format!("{topic}-value")
}

fn registry_error(e: SRCError) -> CodecError {
    CodecError::Registry(e.to_string())
}

/// Encodes and decodes [`LocationFix`] values of one topic in the Confluent wire format.
pub struct Codec {
    settings: SrSettings,
    schema: Schema,
    writer_id: OnceLock<u32>,
    /// Writer schema ids seen on input, and whether each is `location.avsc` (same canonical
    /// form: same bytes), so its values take the direct decoder.
    ours: RwLock<HashMap<u32, bool>>,
    encoder: EasyAvroEncoder,
    decoder: EasyAvroDecoder,
    strategy: SubjectNameStrategy,
    topic: String,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

fn supplied_schema() -> SuppliedSchema {
    SuppliedSchema::new(
        Some("io.locus.v1.LocationFix".into()),
        SchemaType::Avro,
        LOCATION_AVSC.to_string(),
    )
}

/// The parsed [`LOCATION_AVSC`].
pub fn location_schema() -> Schema {
    // The schema is compiled into the binary and checked by the tests.
    Schema::parse_str(LOCATION_AVSC)
        .unwrap_or_else(|e| unreachable!("location.avsc is invalid: {e}"))
}

impl Codec {
    pub fn new(cfg: &RegistryConfig, topic: &str) -> Result<Codec, CodecError> {
        static LIMIT: Once = Once::new();
        LIMIT.call_once(|| {
            apache_avro::util::max_allocation_bytes(MAX_AVRO_ALLOCATION);
        });
        let settings = cfg.settings()?;
        Ok(Codec {
            schema: location_schema(),
            writer_id: OnceLock::new(),
            ours: RwLock::new(HashMap::new()),
            encoder: EasyAvroEncoder::new(settings.clone()),
            decoder: EasyAvroDecoder::new(settings.clone()),
            settings,
            strategy: SubjectNameStrategy::TopicNameStrategyWithSchema(
                topic.to_string(),
                false,
                supplied_schema(),
            ),
            topic: topic.to_string(),
        })
    }

    /// Registers `location.avsc` under `<topic>-value` (a no-op if it is already there) and
    /// returns its id. The registry refuses it (409) if it breaks the subject's compatibility.
    pub async fn register(&self) -> Result<u32, CodecError> {
        post_schema(
            &self.settings,
            value_subject(&self.topic),
            supplied_schema(),
        )
        .await
        .map(|r| r.id)
        .map_err(registry_error)
    }

    /// Encodes with `location.avsc`. The first call registers the schema (or finds its id)
    /// through the registry; later calls encode locally with the cached id.
    pub async fn encode(&self, fix: &LocationFix) -> Result<Vec<u8>, CodecError> {
        let id = match self.writer_id.get() {
            Some(id) => *id,
            None => {
                // The converter's own path registers (idempotently) and caches the schema.
                self.encoder
                    .encode_struct(fix, &self.strategy)
                    .await
                    .map_err(|e| {
                        if e.retriable {
                            registry_error(e)
                        } else {
                            CodecError::Encode(e.to_string())
                        }
                    })?;
                let id = self.register().await?;
                let _ = self.writer_id.set(id);
                id
            }
        };
        Ok(wire::encode_framed(id, fix))
    }

    /// Whether values written with schema `id` are `location.avsc` ones. Asks the registry
    /// once per id; an id it cannot resolve is not remembered (the generic path reports it).
    async fn is_ours(&self, id: u32) -> bool {
        if self.writer_id.get() == Some(&id) {
            return true;
        }
        if let Some(known) = self.ours.read().ok().and_then(|m| m.get(&id).copied()) {
            return known;
        }
        let Ok(registered) = get_schema_by_id(id, &self.settings).await else {
            return false;
        };
        let same = Schema::parse_str(&registered.schema)
            .is_ok_and(|s| s.canonical_form() == self.schema.canonical_form());
        if let Ok(mut m) = self.ours.write() {
            m.insert(id, same);
        }
        same
    }

    /// Decodes a Confluent-framed Avro value with the writer schema its id names.
    pub async fn decode(&self, bytes: &[u8]) -> Result<LocationFix, CodecError> {
        let id = check_framing(bytes)?;
        if self.is_ours(id).await {
            return wire::read_fix(&bytes[5..]);
        }
        let decoded = self.decoder.decode(Some(bytes)).await.map_err(|e| {
            if e.retriable {
                registry_error(e)
            } else {
                CodecError::Decode(e.to_string())
            }
        })?;
        apache_avro::from_value::<LocationFix>(&decoded.value)
            .map_err(|e| CodecError::Shape(e.to_string()))
    }
}

fn check_framing(bytes: &[u8]) -> Result<u32, CodecError> {
    match bytes {
        [0, a, b, c, d, ..] => Ok(u32::from_be_bytes([*a, *b, *c, *d])),
        [] => Err(CodecError::Framing("empty payload".into())),
        [m, ..] if *m != 0 => Err(CodecError::Framing(format!(
            "magic byte is {m:#04x}, expected 0x00"
        ))),
        _ => Err(CodecError::Framing(format!(
            "{} bytes is shorter than the 5-byte header",
            bytes.len()
        ))),
    }
}

/// Decodes a Confluent-framed value with a known writer schema, without a registry
/// (used by the fuzz target and by readers that pinned the schema).
#[allow(deprecated)] // from_avro_datum: the one-shot form of GenericDatumReader
pub fn decode_with_schema(schema: &Schema, bytes: &[u8]) -> Result<LocationFix, CodecError> {
    check_framing(bytes)?;
    let mut datum = &bytes[5..];
    let value = apache_avro::from_avro_datum(schema, &mut datum, None)
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    if !datum.is_empty() {
        return Err(CodecError::Decode(format!(
            "{} trailing bytes after the record",
            datum.len()
        )));
    }
    apache_avro::from_value::<LocationFix>(&value).map_err(|e| CodecError::Shape(e.to_string()))
}

/// Encodes with a known schema and id, without a registry (the inverse of
/// [`decode_with_schema`]).
#[allow(deprecated)] // to_avro_datum: the one-shot form of GenericDatumWriter
pub fn encode_with_schema(
    schema: &Schema,
    id: u32,
    fix: &LocationFix,
) -> Result<Vec<u8>, CodecError> {
    let value = apache_avro::to_value(fix).map_err(|e| CodecError::Encode(e.to_string()))?;
    let value = value
        .resolve(schema)
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    let mut out = vec![0];
    out.extend_from_slice(&id.to_be_bytes());
    out.extend(
        apache_avro::to_avro_datum(schema, value).map_err(|e| CodecError::Encode(e.to_string()))?,
    );
    Ok(out)
}
