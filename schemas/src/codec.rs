use std::collections::HashMap;
use std::sync::{Arc, Mutex, Once, OnceLock, RwLock};
use std::time::{Duration, Instant};

use apache_avro::Schema;
use schema_registry_converter::async_impl::schema_registry::{
    SrSettings, get_schema_by_id, post_schema,
};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{SchemaType, SuppliedSchema};
use serde::{Deserialize, Serialize};

use crate::{CodecError, FixRef, LOCATION_AVSC, LocationFix, Secret, wire};

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

/// The HTTP status a registry call failed with, if it got an answer.
fn http_status(e: &SRCError) -> Option<u16> {
    let (_, rest) = e.error.split_once("failed with status ")?;
    rest.get(..3)?.parse().ok()
}

/// Whether a failed registry call is an outage (retry, never dead-letter): no answer, or an
/// answer that says nothing about the request itself — 5xx, 429 (rate limited), 408, and
/// 401/403 (credentials: a deployment problem, not bad data).
fn is_outage(e: &SRCError) -> bool {
    e.retriable || http_status(e).is_none_or(|s| s >= 500 || matches!(s, 401 | 403 | 408 | 429))
}

/// How long the registry's "no such schema id" is believed, and how many such ids are
/// remembered at most: a device sending made-up ids costs one registry call per id per
/// minute, and bounded memory.
const UNKNOWN_ID_TTL: Duration = Duration::from_secs(60);
const UNKNOWN_IDS_MAX: usize = 10_000;

/// Whether the registry answered that it has no schema with the id asked for: a 404 whose
/// body carries Confluent's error code 40403. Any other 404 (a wrong registry URL, a proxy)
/// is an outage, not proof that the id does not exist.
fn schema_not_found(e: &SRCError) -> bool {
    http_status(e) == Some(404)
        && e.cause
            .as_deref()
            .is_some_and(|c| c.starts_with("error_code: 40403,"))
}

/// What a writer schema id stands for.
#[derive(Clone)]
enum Writer {
    /// `location.avsc` itself: the direct decoder.
    Ours,
    /// Another registered schema: the generic decoder, resolving into `location.avsc`.
    Other(Arc<Schema>),
    /// A registered schema Locus cannot read fixes with (not Avro, or references): every
    /// value written with it is bad data, known without asking again.
    Unreadable(Arc<str>),
}

/// Encodes and decodes [`LocationFix`] values of one topic in the Confluent wire format.
pub struct Codec {
    settings: SrSettings,
    schema: Schema,
    writer_id: OnceLock<u32>,
    /// Writer schema ids the registry resolved (never forgotten: registered schemas do not
    /// change, and there are as many as the registry holds).
    known: RwLock<HashMap<u32, Writer>>,
    /// Ids the registry said it does not have, until when that is believed.
    unknown: Mutex<HashMap<u32, Instant>>,
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
            known: RwLock::new(HashMap::new()),
            unknown: Mutex::new(HashMap::new()),
            settings,
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
    /// through the registry; later calls encode locally with the cached id. A registry that
    /// fails is a [`CodecError::Registry`] every time (nothing about a failure is cached), so
    /// the caller retries and the next call after the registry recovers succeeds.
    pub async fn encode(&self, fix: &LocationFix) -> Result<Vec<u8>, CodecError> {
        let id = match self.writer_id.get() {
            Some(id) => *id,
            None => {
                let id = self.register().await?;
                let _ = self.writer_id.set(id);
                id
            }
        };
        Ok(wire::encode_framed(id, fix))
    }

    /// The writer schema `id` names. Asks the registry once per id it has; an id it says it
    /// does not have is a [`CodecError::Decode`] (bad data) and believed for a minute; any
    /// other failure is a [`CodecError::Registry`] (an outage: retry) and not remembered.
    async fn writer(&self, id: u32) -> Result<Writer, CodecError> {
        if self.writer_id.get() == Some(&id) {
            return Ok(Writer::Ours);
        }
        if let Some(w) = self.known.read().ok().and_then(|m| m.get(&id).cloned()) {
            return Ok(w);
        }
        let not_found = || CodecError::Decode(format!("schema id {id} is not in the registry"));
        {
            let mut unknown = self.unknown.lock().unwrap_or_else(|p| p.into_inner());
            match unknown.get(&id) {
                Some(until) if *until > Instant::now() => return Err(not_found()),
                Some(_) => {
                    unknown.remove(&id);
                }
                None => {}
            }
        }
        let registered = match get_schema_by_id(id, &self.settings).await {
            Ok(r) => r,
            Err(e) if !schema_not_found(&e) && (is_outage(&e) || http_status(&e) == Some(404)) => {
                return Err(registry_error(e));
            }
            Err(_) => {
                let mut unknown = self.unknown.lock().unwrap_or_else(|p| p.into_inner());
                if unknown.len() >= UNKNOWN_IDS_MAX {
                    let now = Instant::now();
                    unknown.retain(|_, until| *until > now);
                    if unknown.len() >= UNKNOWN_IDS_MAX {
                        unknown.clear();
                    }
                }
                unknown.insert(id, Instant::now() + UNKNOWN_ID_TTL);
                return Err(not_found());
            }
        };
        let writer = match Schema::parse_str(&registered.schema) {
            Ok(schema) if schema.canonical_form() == self.schema.canonical_form() => Writer::Ours,
            Ok(schema) => Writer::Other(Arc::new(schema)),
            Err(e) => Writer::Unreadable(
                format!("schema id {id} is not an Avro schema Locus reads: {e}").into(),
            ),
        };
        if let Ok(mut m) = self.known.write() {
            m.insert(id, writer.clone());
        }
        Ok(writer)
    }

    /// Decodes a Confluent-framed Avro value with the writer schema its id names.
    pub async fn decode(&self, bytes: &[u8]) -> Result<LocationFix, CodecError> {
        let id = check_framing(bytes)?;
        match self.writer(id).await? {
            Writer::Ours => wire::read_fix(&bytes[5..]),
            Writer::Other(writer) => decode_resolving(&writer, &self.schema, bytes),
            Writer::Unreadable(why) => Err(CodecError::Decode(why.to_string())),
        }
    }

    /// [`Codec::decode`] for a reader that looks at the fix in place: `f` gets it with its
    /// strings borrowed from `bytes` (values of other writer schemas are resolved first).
    pub async fn decode_with<R>(
        &self,
        bytes: &[u8],
        f: impl FnOnce(FixRef<'_>) -> R,
    ) -> Result<R, CodecError> {
        let id = check_framing(bytes)?;
        match self.writer(id).await? {
            Writer::Ours => wire::read_fix_ref(&bytes[5..]).map(f),
            Writer::Other(writer) => {
                decode_resolving(&writer, &self.schema, bytes).map(|fix| f(fix.as_fix_ref()))
            }
            Writer::Unreadable(why) => Err(CodecError::Decode(why.to_string())),
        }
    }
}

/// A value written with another registered schema, read into `location.avsc` by Avro's schema
/// resolution (added fields with defaults, promoted types).
#[allow(deprecated)] // from_avro_datum: the one-shot form of GenericDatumReader
fn decode_resolving(
    writer: &Schema,
    reader: &Schema,
    bytes: &[u8],
) -> Result<LocationFix, CodecError> {
    let mut datum = &bytes[5..];
    let value = apache_avro::from_avro_datum(writer, &mut datum, Some(reader))
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    apache_avro::from_value::<LocationFix>(&value).map_err(|e| CodecError::Shape(e.to_string()))
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
