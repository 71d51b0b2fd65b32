//! Groups end to end, on a `locus cache` process against the local stack: managed through the
//! API (stored in the scope's compacted groups topic), resolved for tokens that name them,
//! and loaded from the topic by a process started later.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// A token of `tenant` with these claims (HS256, the dev secret), valid for ten minutes.
fn token_with(tenant: &str, groups: Option<&[&str]>, scope: Option<&str>) -> String {
    locus_sse::mint_hs256(
        DEV_SECRET,
        &locus_sse::Claims {
            tenant: tenant.into(),
            groups: groups.map(|g| g.iter().map(|s| s.to_string()).collect()),
            scope: scope.map(str::to_owned),
            exp: (now_ms() / 1000 + 600) as u64,
            ..Default::default()
        },
    )
    .unwrap()
}

async fn call(
    method: reqwest::Method,
    port: u16,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = reqwest::Client::new().request(method, format!("http://127.0.0.1:{port}{path}"));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn start(s: &Scope, prefix: &str, extra: &[(&'static str, String)]) -> (Proc, u16) {
    let mut env = vec![
        ("LOCUS_CACHE__KEY_PREFIX", prefix.to_string()),
        ("LOCUS_CACHE__GROUP", unique("g-")),
        ("LOCUS_CACHE__REDIS_URL", redis_url()),
    ];
    env.extend_from_slice(extra);
    let (p, port) = locus(s, "cache", &["cache"], &env);
    wait_ready(port, Duration::from_secs(60)).await;
    wait_metric(port, "locus_groups_loaded", 1.0, Duration::from_secs(30)).await;
    (p, port)
}

#[tokio::test(flavor = "multi_thread")]
async fn groups_are_managed_resolved_and_loaded_from_their_topic() {
    use reqwest::Method;
    let s = Scope::new("groups");
    s.create_topics().await;
    let prefix = unique("gr");
    let (_cache, port) = start(
        &s,
        &prefix,
        &[("LOCUS_PUSH__GROUPS_MAX_USERS", "6000".into())],
    )
    .await;
    // Positions of u1, u2, u3 and of u4999 (a member of the large group below).
    let now = now_ms();
    let fixes: Vec<_> = ["u1", "u2", "u3", "u4999"]
        .iter()
        .map(|u| fix_at("acme", u, 1, now, 52.5, 13.4))
        .collect();
    FixProducer::new(&s).send(&fixes).await;
    wait_metric(
        port,
        "locus_stage_applied_records_total",
        4.0,
        Duration::from_secs(30),
    )
    .await;

    let admin = token_with("acme", None, Some("groups:write"));
    let reader = token_with("acme", None, None);
    let path = "/v1/tenants/acme/groups/north";
    let north = json!({ "users": ["u2", "u1", "u1"] });

    // Who may change a group.
    let (st, _) = call(Method::PUT, port, path, None, Some(north.clone())).await;
    assert_eq!(st, 401, "no token");
    let (st, v) = call(Method::PUT, port, path, Some(&reader), Some(north.clone())).await;
    assert_eq!(st, 403, "no groups:write scope: {v}");
    let other = token_with("other", None, Some("groups:write"));
    let (st, _) = call(Method::PUT, port, path, Some(&other), Some(north.clone())).await;
    assert_eq!(st, 403, "another tenant's admin");
    // What a group may be.
    for (p, body, want) in [
        ("/v1/tenants/acme/groups/a:b", north.clone(), 400),
        (
            "/v1/tenants/acme/groups/%3Cimg%20src=x%3E",
            north.clone(),
            400,
        ),
        (path, json!({ "users": ["x".repeat(2_000_000)] }), 413),
        (path, json!({ "users": ["ok", "<img src=x>"] }), 400),
        (path, json!({ "users": "u1" }), 400),
        (path, json!({ "users": ["u1"], "admin": true }), 400),
        (path, json!({ "users": [] }), 400),
        (
            path,
            json!({ "users": (0..6001).map(|i| format!("u{i}")).collect::<Vec<_>>() }),
            413,
        ),
    ] {
        let (st, v) = call(Method::PUT, port, p, Some(&admin), Some(body)).await;
        assert_eq!(st, want, "{p}: {v}");
    }

    // Stored, read back here at once, duplicates gone.
    let (st, v) = call(Method::PUT, port, path, Some(&admin), Some(north)).await;
    assert_eq!((st, &v["users"]), (200, &json!(["u1", "u2"])), "{v}");
    let (st, v) = call(Method::GET, port, path, Some(&reader), None).await;
    assert_eq!((st, &v["users"]), (200, &json!(["u1", "u2"])));
    let (st, v) = call(
        Method::GET,
        port,
        "/v1/tenants/acme/groups",
        Some(&reader),
        None,
    )
    .await;
    assert_eq!(
        (st, &v["groups"]),
        (200, &json!([{ "group": "north", "users": 2 }]))
    );

    // A token naming the group sees its members, one by one, and nobody else.
    let manager = token_with("acme", Some(&["north"]), None);
    for (user, want) in [("u1", 200), ("u2", 200), ("u3", 403)] {
        let p = format!("/v1/tenants/acme/users/{user}/position");
        let (st, _) = call(Method::GET, port, &p, Some(&manager), None).await;
        assert_eq!(st, want, "{user}");
    }
    let (st, _) = call(
        Method::GET,
        port,
        "/v1/tenants/acme/positions",
        Some(&manager),
        None,
    )
    .await;
    assert_eq!(st, 403, "a group is not the tenant");
    let (st, _) = call(Method::GET, port, path, Some(&manager), None).await;
    assert_eq!(st, 403, "a group token does not read groups");

    // A team of 5,000 in one short token (listing them would overflow the request head).
    let big: Vec<String> = (0..5000).map(|i| format!("u{i}")).collect();
    let p = "/v1/tenants/acme/groups/everyone-north";
    let (st, _) = call(
        Method::PUT,
        port,
        p,
        Some(&admin),
        Some(json!({ "users": big })),
    )
    .await;
    assert_eq!(st, 200);
    let lead = token_with("acme", Some(&["everyone-north"]), None);
    assert!(lead.len() < 400, "the token is {} bytes", lead.len());
    let (st, v) = call(
        Method::GET,
        port,
        "/v1/tenants/acme/users/u4999/position",
        Some(&lead),
        None,
    )
    .await;
    assert_eq!(st, 200, "{v}");

    // A process started now loads the groups from the topic.
    let (_later, port2) = start(&s, &prefix, &[]).await;
    let (st, _) = call(
        Method::GET,
        port2,
        "/v1/tenants/acme/users/u4999/position",
        Some(&lead),
        None,
    )
    .await;
    assert_eq!(st, 200, "loaded from the topic");
    assert_eq!(metric(port2, "locus_groups ").await, 2.0);

    // Deleted: the manager's token no longer sees the members, on either process.
    let (st, _) = call(Method::DELETE, port, path, Some(&admin), None).await;
    assert_eq!(st, 204);
    let (st, _) = call(Method::GET, port, path, Some(&reader), None).await;
    assert_eq!(st, 404);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for p in [port, port2] {
        loop {
            let (st, _) = call(
                Method::GET,
                p,
                "/v1/tenants/acme/users/u1/position",
                Some(&manager),
                None,
            )
            .await;
            if st == 403 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "still {st} on {p}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
