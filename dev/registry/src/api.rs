//! The Confluent Schema Registry REST API (the subset Locus and Confluent clients use).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::error::ApiError;
use crate::store::{Level, Store};

pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

pub type Shared = Arc<Mutex<Store>>;

pub fn router(store: Shared) -> Router {
    Router::new()
        .route("/", get(|| async { reply(json!({})) }))
        .route("/subjects", get(list_subjects))
        .route("/subjects/{subject}", post(lookup))
        .route(
            "/subjects/{subject}/versions",
            get(list_versions).post(register),
        )
        .route("/subjects/{subject}/versions/{version}", get(get_version))
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(get_version_schema),
        )
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/schemas/ids/{id}/versions", get(schema_usages))
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(check_compatibility),
        )
        .route("/config", get(get_global_config).put(put_global_config))
        .route(
            "/config/{subject}",
            get(get_subject_config).put(put_subject_config),
        )
        .with_state(store)
}

fn reply(body: Value) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], Json(body)).into_response()
}

/// Request bodies arrive as JSON under several content types
/// (`application/vnd.schemaregistry.v1+json`, `application/json`, none): accept them all.
fn body<T: for<'de> Deserialize<'de>>(bytes: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::new(42201, format!("Invalid request body: {e}")))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaBody {
    schema: String,
    #[serde(default)]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<Value>,
}

impl SchemaBody {
    fn check(&self) -> Result<(), ApiError> {
        match self.schema_type.as_deref() {
            None | Some("AVRO") => {}
            Some(other) => {
                return Err(ApiError::new(
                    42201,
                    format!(
                        "Invalid schema: schema type {other} is not supported; this registry stores AVRO only"
                    ),
                ));
            }
        }
        if !self.references.is_empty() {
            return Err(ApiError::new(
                42201,
                "Invalid schema: schema references are not supported by this registry",
            ));
        }
        Ok(())
    }
}

async fn list_subjects(State(store): State<Shared>) -> Response {
    reply(json!(store.lock().await.subjects()))
}

async fn list_versions(
    State(store): State<Shared>,
    Path(subject): Path<String>,
) -> Result<Response, ApiError> {
    Ok(reply(json!(store.lock().await.versions(&subject)?)))
}

async fn register(
    State(store): State<Shared>,
    Path(subject): Path<String>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let req: SchemaBody = body(&bytes)?;
    req.check()?;
    let id = store.lock().await.register(&subject, &req.schema)?;
    tracing::info!(subject, id, "schema registered");
    Ok(reply(json!({ "id": id })))
}

async fn lookup(
    State(store): State<Shared>,
    Path(subject): Path<String>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let req: SchemaBody = body(&bytes)?;
    req.check()?;
    let found = store.lock().await.lookup(&subject, &req.schema)?;
    Ok(reply(json!(found)))
}

async fn get_version(
    State(store): State<Shared>,
    Path((subject, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    Ok(reply(json!(
        store.lock().await.version(&subject, &version)?
    )))
}

async fn get_version_schema(
    State(store): State<Shared>,
    Path((subject, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let v = store.lock().await.version(&subject, &version)?;
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], v.schema).into_response())
}

fn parse_id(id: &str) -> Result<u32, ApiError> {
    id.parse()
        .map_err(|_| ApiError::new(40403, "Schema not found"))
}

async fn schema_by_id(
    State(store): State<Shared>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    Ok(reply(
        json!({ "schema": store.lock().await.schema_by_id(id)? }),
    ))
}

async fn schema_usages(
    State(store): State<Shared>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let store = store.lock().await;
    store.schema_by_id(id)?;
    let usages: Vec<Value> = store
        .usages(id)
        .into_iter()
        .map(|(subject, version)| json!({ "subject": subject, "version": version }))
        .collect();
    Ok(reply(json!(usages)))
}

#[derive(Debug, Deserialize)]
struct VerboseQuery {
    /// `true`/`false` in any case (Python clients send `True`).
    #[serde(default)]
    verbose: Option<String>,
}

async fn check_compatibility(
    State(store): State<Shared>,
    Path((subject, version)): Path<(String, String)>,
    Query(q): Query<VerboseQuery>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let req: SchemaBody = body(&bytes)?;
    req.check()?;
    let candidate = apache_avro::Schema::parse_str(&req.schema)
        .map_err(|e| ApiError::new(42201, format!("Invalid schema: {e}")))?;
    let store = store.lock().await;
    let reasons = match store.versions(&subject) {
        // Nothing registered yet: anything is compatible with nothing.
        Err(_) if version == "latest" => vec![],
        Err(e) => return Err(e),
        Ok(_) => {
            let v = store.version(&subject, &version)?;
            let only = if version == "latest" {
                None
            } else {
                Some(v.version)
            };
            store.incompatibilities(&subject, &candidate, only)
        }
    };
    let mut out = json!({ "is_compatible": reasons.is_empty() });
    if q.verbose.is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        out["messages"] = json!(reasons);
    }
    Ok(reply(out))
}

#[derive(Debug, Deserialize)]
struct ConfigBody {
    compatibility: String,
}

fn parse_level(bytes: &Bytes) -> Result<Level, ApiError> {
    let req: ConfigBody = body(bytes)?;
    Level::parse(&req.compatibility).ok_or_else(|| {
        ApiError::new(
            42203,
            format!(
                "Invalid compatibility level '{}'. Valid values are NONE, BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL, FULL_TRANSITIVE",
                req.compatibility
            ),
        )
    })
}

async fn get_global_config(State(store): State<Shared>) -> Response {
    reply(json!({ "compatibilityLevel": store.lock().await.level(None) }))
}

async fn put_global_config(
    State(store): State<Shared>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let level = parse_level(&bytes)?;
    store.lock().await.set_level(None, level)?;
    Ok(reply(json!({ "compatibility": level })))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DefaultToGlobal {
    #[serde(default)]
    default_to_global: Option<String>,
}

async fn get_subject_config(
    State(store): State<Shared>,
    Path(subject): Path<String>,
    Query(q): Query<DefaultToGlobal>,
) -> Result<Response, ApiError> {
    let store = store.lock().await;
    match store.level(Some(&subject)) {
        Some(level) => Ok(reply(json!({ "compatibilityLevel": level }))),
        None if q
            .default_to_global
            .is_some_and(|v| v.eq_ignore_ascii_case("true")) =>
        {
            Ok(reply(json!({ "compatibilityLevel": store.level(None) })))
        }
        None => Err(ApiError::new(
            40408,
            format!("Subject '{subject}' does not have subject-level compatibility configured"),
        )),
    }
}

async fn put_subject_config(
    State(store): State<Shared>,
    Path(subject): Path<String>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let level = parse_level(&bytes)?;
    store.lock().await.set_level(Some(&subject), level)?;
    Ok(reply(json!({ "compatibility": level })))
}
