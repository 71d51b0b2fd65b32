//! `/v1/tenants/{tenant}/groups[/{group}]`: list, read, replace and delete a tenant's
//! groups. Behind the data routes' token check (the pipeline's `require_token`, which puts
//! the token's [`Claims`] in the request): a token of the tenant that is not limited to some
//! users reads them; changing them needs the scope `groups:write` too.
//!
//! `PUT` takes `{"users": [...]}` (ids from the safe set; duplicates dropped; at most
//! `push.groups_max_users`) and replaces the group; it answers 200 with the group once this
//! process has read the change back from Kafka (202 if that took longer than 5 s: stored,
//! not yet visible here). `DELETE` answers 204, whether the group existed or not.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use locus_api::ApiError;
use locus_kafka::{Delivered, KafkaConfig, Producer};
use serde_json::json;
use tracing::{info, warn};

use super::{Groups, Members, key, valid_id};
use crate::auth::Claims;
use crate::metrics::M;

/// The scope a token needs to change groups.
pub const WRITE_SCOPE: &str = "groups:write";

/// Largest stored group value, bytes: under Kafka's default message size (1,000,000).
const MAX_VALUE_BYTES: usize = 900_000;

/// How long a write waits to see itself applied here.
const APPLY_WAIT: Duration = Duration::from_secs(5);

/// The groups API's producer gives up on a record after this long (`message.timeout.ms`):
/// a change the API answered as failed can not be written later over a newer one.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug)]
pub struct GroupsApi {
    groups: Arc<Groups>,
    /// Kafka with a bounded delivery time ([`DELIVERY_TIMEOUT`]).
    kafka: KafkaConfig,
    /// Made at the first change: most processes never write a group.
    producer: tokio::sync::OnceCell<Producer>,
    max_users: usize,
}

impl GroupsApi {
    pub fn new(groups: Arc<Groups>, kafka: &KafkaConfig, max_users: usize) -> GroupsApi {
        let mut kafka = kafka.clone();
        // A change answered as failed must never land later over a newer one.
        kafka.producer.message_timeout_ms = DELIVERY_TIMEOUT.as_millis() as u32;
        GroupsApi {
            groups,
            kafka,
            producer: tokio::sync::OnceCell::new(),
            max_users,
        }
    }

    async fn producer(&self) -> Result<&Producer, ApiError> {
        self.producer
            .get_or_try_init(|| async { Producer::new(&self.kafka, "groups") })
            .await
            .map_err(|e| ApiError::unavailable(format!("no Kafka producer: {e}"), 5))
    }
}

pub fn router(api: Arc<GroupsApi>) -> Router {
    Router::new()
        .route("/v1/tenants/{tenant}/groups", get(list))
        .route(
            "/v1/tenants/{tenant}/groups/{group}",
            get(read)
                .put(replace)
                .delete(remove)
                .layer(DefaultBodyLimit::max(MAX_VALUE_BYTES * 2)),
        )
        .with_state(api)
}

fn loaded(api: &GroupsApi) -> Result<(), ApiError> {
    if api.groups.is_loaded() {
        Ok(())
    } else {
        Err(ApiError::unavailable(
            "the groups are still loading; retry",
            2,
        ))
    }
}

fn may_write(claims: &Claims) -> Result<(), ApiError> {
    if claims.has_scope(WRITE_SCOPE) {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "changing groups needs a token with the scope {WRITE_SCOPE}"
        )))
    }
}

/// The request's tenant and group are ids of the safe set, and the token is for the tenant.
/// (The data routes' token check has done that last part already; this does not depend on
/// it: without the token check there are no claims, and every request is refused.)
fn checked(claims: Option<&Claims>, tenant: &str, group: Option<&str>) -> Result<(), ApiError> {
    let Some(claims) = claims else {
        return Err(ApiError::unauthorized("a token is required"));
    };
    if claims.tenant != tenant {
        return Err(ApiError::forbidden("this token is not for this tenant"));
    }
    if !valid_id(tenant) {
        return Err(ApiError::bad_request(
            "a tenant id is 1 to 128 characters of A-Z a-z 0-9 . _ ~ @ -",
        ));
    }
    if group.is_some_and(|g| !valid_id(g)) {
        return Err(ApiError::bad_request(
            "a group name is 1 to 128 characters of A-Z a-z 0-9 . _ ~ @ -",
        ));
    }
    Ok(())
}

async fn list(
    State(api): State<Arc<GroupsApi>>,
    claims: Option<Extension<Claims>>,
    Path(tenant): Path<String>,
) -> Result<Response, ApiError> {
    checked(claims.as_deref(), &tenant, None)?;
    loaded(&api)?;
    let groups: Vec<_> = api
        .groups
        .list(&tenant)
        .into_iter()
        .map(|(group, users)| json!({ "group": group, "users": users }))
        .collect();
    Ok(Json(json!({ "tenant": tenant, "groups": groups })).into_response())
}

async fn read(
    State(api): State<Arc<GroupsApi>>,
    claims: Option<Extension<Claims>>,
    Path((tenant, group)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    checked(claims.as_deref(), &tenant, Some(&group))?;
    loaded(&api)?;
    let members = api
        .groups
        .members(&tenant, &group)
        .ok_or_else(|| ApiError::not_found(format!("no group '{group}' in tenant '{tenant}'")))?;
    let users: BTreeSet<&String> = members.iter().collect();
    Ok(Json(json!({ "tenant": tenant, "group": group, "users": users })).into_response())
}

async fn replace(
    State(api): State<Arc<GroupsApi>>,
    claims: Option<Extension<Claims>>,
    Path((tenant, group)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    checked(claims.as_deref(), &tenant, Some(&group))?;
    let Some(Extension(claims)) = claims else {
        return Err(ApiError::unauthorized("a token is required"));
    };
    may_write(&claims)?;
    // Parsed only once the writer is known.
    let members: Members = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!("bad body: {e} (expected {{\"users\": [...]}})"))
    })?;
    if members.users.is_empty() {
        return Err(ApiError::bad_request(
            "a group has at least one user (DELETE removes a group)",
        ));
    }
    if let Some(bad) = members.users.iter().find(|u| !valid_id(u)) {
        return Err(ApiError::bad_request(format!(
            "user id {bad:?} is not 1 to 128 characters of A-Z a-z 0-9 . _ ~ @ -"
        )));
    }
    let users: BTreeSet<String> = members.users.into_iter().collect();
    if users.len() > api.max_users {
        return Err(ApiError::too_large(format!(
            "a group has at most push.groups_max_users ({}) users",
            api.max_users
        )));
    }
    let value = serde_json::to_vec(&json!({ "users": users }))
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    if value.len() > MAX_VALUE_BYTES {
        return Err(ApiError::too_large(format!(
            "the group is {} bytes; at most {MAX_VALUE_BYTES}: split it",
            value.len()
        )));
    }
    let k = key(&tenant, &group);
    let sent = api
        .producer()
        .await?
        .send(api.groups.topic(), k.as_bytes(), &value, &[])
        .await;
    let at = delivered(sent).await?;
    M.group_writes.with_label_values(&["put"]).inc();
    info!(
        tenant,
        group,
        users = users.len(),
        sub = claims.sub,
        "group replaced"
    );
    let status = applied(&api, at).await;
    Ok((
        status,
        Json(json!({ "tenant": tenant, "group": group, "users": users })),
    )
        .into_response())
}

async fn remove(
    State(api): State<Arc<GroupsApi>>,
    claims: Option<Extension<Claims>>,
    Path((tenant, group)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    checked(claims.as_deref(), &tenant, Some(&group))?;
    let Some(Extension(claims)) = claims else {
        return Err(ApiError::unauthorized("a token is required"));
    };
    may_write(&claims)?;
    let k = key(&tenant, &group);
    let sent = api
        .producer()
        .await?
        .send_tombstone(api.groups.topic(), k.as_bytes())
        .await;
    let at = delivered(sent).await?;
    M.group_writes.with_label_values(&["delete"]).inc();
    info!(tenant, group, sub = claims.sub, "group deleted");
    Ok(match applied(&api, at).await {
        StatusCode::OK => StatusCode::NO_CONTENT,
        other => other,
    }
    .into_response())
}

/// Waits for Kafka's acknowledgement (acks=all): the change is durable once this returns.
/// The producer gives up on a record after [`DELIVERY_TIMEOUT`] (it is built so), so a
/// change refused here can not land later over a newer one; but a record timed out may have
/// been written all the same: the answer says the outcome is unknown.
async fn delivered(
    sent: Result<locus_kafka::Pending, locus_kafka::DeliveryError>,
) -> Result<Delivered, ApiError> {
    let outcome = match sent {
        Ok(pending) => pending.delivered().await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    outcome.map_err(|error| {
        warn!(%error, "a group change was not acknowledged");
        ApiError::unavailable(
            format!(
                "Kafka did not acknowledge the change ({error}): it may or may not be stored; \
                 read the group back, or send the change again"
            ),
            5,
        )
    })
}

/// 200 once this process has read the change back, 202 if not within [`APPLY_WAIT`].
async fn applied(api: &GroupsApi, at: Delivered) -> StatusCode {
    if api
        .groups
        .wait_applied(at.partition, at.offset, APPLY_WAIT)
        .await
    {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    }
}
