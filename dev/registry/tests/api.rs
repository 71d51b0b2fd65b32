//! The registry's REST API as Confluent clients see it: against the stack's registry
//! (LOCUS_REGISTRY_URL) for the API, and against a registry this test starts itself for
//! durability across `kill -9`.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

const CT: &str = "application/vnd.schemaregistry.v1+json";
const V1: &str =
    r#"{"type":"record","name":"P","namespace":"t","fields":[{"name":"a","type":"long"}]}"#;
const V2: &str = r#"{"type":"record","name":"P","namespace":"t","fields":[{"name":"a","type":"long"},{"name":"b","type":["null","string"],"default":null}]}"#;
const V3_BREAKS: &str = r#"{"type":"record","name":"P","namespace":"t","fields":[{"name":"a","type":"long"},{"name":"c","type":"string"}]}"#;

fn base() -> String {
    std::env::var("LOCUS_REGISTRY_URL").unwrap_or_else(|_| "http://127.0.0.1:8081".into())
}

fn subject() -> String {
    format!("api-{}-value", uuid::Uuid::new_v4().simple())
}

async fn call(
    c: &Client,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = c.request(method, url).header("content-type", CT);
    if let Some(b) = body {
        req = req.body(b.to_string());
    }
    let resp = req.send().await.expect("registry reachable");
    let status = resp.status();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    assert_eq!(ct, CT, "content type");
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn register(c: &Client, base: &str, s: &str, schema: &str) -> (StatusCode, Value) {
    call(
        c,
        reqwest::Method::POST,
        format!("{base}/subjects/{s}/versions"),
        Some(json!({ "schema": schema })),
    )
    .await
}

#[tokio::test]
async fn subjects_versions_and_ids() {
    let c = Client::new();
    let b = base();
    let s = subject();
    let (st, r1) = register(&c, &b, &s, V1).await;
    assert_eq!(st, 200);
    let id1 = r1["id"].as_u64().unwrap();
    // Same schema (even reformatted) → same id, no new version.
    let reformatted =
        serde_json::to_string_pretty(&serde_json::from_str::<Value>(V1).unwrap()).unwrap();
    let (_, again) = register(&c, &b, &s, &reformatted).await;
    assert_eq!(again["id"].as_u64().unwrap(), id1);
    let (_, r2) = register(&c, &b, &s, V2).await;
    let id2 = r2["id"].as_u64().unwrap();
    assert_ne!(id1, id2);

    let (_, versions) = call(
        &c,
        reqwest::Method::GET,
        format!("{b}/subjects/{s}/versions"),
        None,
    )
    .await;
    assert_eq!(versions, json!([1, 2]));
    let (_, subjects) = call(&c, reqwest::Method::GET, format!("{b}/subjects"), None).await;
    assert!(subjects.as_array().unwrap().contains(&json!(s)));

    let (_, latest) = call(
        &c,
        reqwest::Method::GET,
        format!("{b}/subjects/{s}/versions/latest"),
        None,
    )
    .await;
    assert_eq!(latest["version"], 2);
    assert_eq!(latest["id"].as_u64().unwrap(), id2);
    assert_eq!(latest["subject"], json!(s));
    let (_, v1) = call(
        &c,
        reqwest::Method::GET,
        format!("{b}/subjects/{s}/versions/1"),
        None,
    )
    .await;
    assert_eq!(v1["schema"], json!(V1));

    let (_, by_id) = call(
        &c,
        reqwest::Method::GET,
        format!("{b}/schemas/ids/{id1}"),
        None,
    )
    .await;
    assert_eq!(by_id["schema"], json!(V1));

    let (st, found) = call(
        &c,
        reqwest::Method::POST,
        format!("{b}/subjects/{s}"),
        Some(json!({ "schema": V2 })),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(found["version"], 2);
    assert_eq!(found["id"].as_u64().unwrap(), id2);
}

#[tokio::test]
async fn confluent_error_codes() {
    let c = Client::new();
    let b = base();
    let s = subject();
    let get = reqwest::Method::GET;
    let (st, e) = call(&c, get.clone(), format!("{b}/subjects/{s}/versions"), None).await;
    assert_eq!((st.as_u16(), e["error_code"].as_u64()), (404, Some(40401)));
    register(&c, &b, &s, V1).await;
    let (st, e) = call(
        &c,
        get.clone(),
        format!("{b}/subjects/{s}/versions/9"),
        None,
    )
    .await;
    assert_eq!((st.as_u16(), e["error_code"].as_u64()), (404, Some(40402)));
    let (st, e) = call(&c, get.clone(), format!("{b}/schemas/ids/987654321"), None).await;
    assert_eq!((st.as_u16(), e["error_code"].as_u64()), (404, Some(40403)));
    let (st, e) = call(
        &c,
        reqwest::Method::POST,
        format!("{b}/subjects/{s}"),
        Some(json!({ "schema": V2 })),
    )
    .await;
    assert_eq!((st.as_u16(), e["error_code"].as_u64()), (404, Some(40403)));
    let (st, e) = register(&c, &b, &s, "{\"type\": \"recrod\"}").await;
    assert_eq!((st.as_u16(), e["error_code"].as_u64()), (422, Some(42201)));
    let (st, e) = register(&c, &b, &s, V3_BREAKS).await;
    assert_eq!((st.as_u16(), e["error_code"].as_u64()), (409, Some(409)));
    assert!(e["message"].as_str().unwrap().contains("incompatible"));
}

#[tokio::test]
async fn compatibility_levels_and_checks() {
    let c = Client::new();
    let b = base();
    let s = subject();
    let put = reqwest::Method::PUT;
    let (_, g) = call(&c, reqwest::Method::GET, format!("{b}/config"), None).await;
    assert!(g["compatibilityLevel"].is_string());
    let (st, e) = call(&c, reqwest::Method::GET, format!("{b}/config/{s}"), None).await;
    assert_eq!((st.as_u16(), e["error_code"].as_u64()), (404, Some(40408)));
    let (st, e) = call(
        &c,
        put.clone(),
        format!("{b}/config/{s}"),
        Some(json!({"compatibility": "SIDEWAYS"})),
    )
    .await;
    assert_eq!((st.as_u16(), e["error_code"].as_u64()), (422, Some(42203)));

    register(&c, &b, &s, V1).await;
    let check = |schema: &'static str, v: &'static str| {
        let c = c.clone();
        let url = format!("{b}/compatibility/subjects/{s}/versions/{v}?verbose=true");
        async move {
            call(
                &c,
                reqwest::Method::POST,
                url,
                Some(json!({ "schema": schema })),
            )
            .await
            .1
        }
    };
    assert_eq!(check(V2, "latest").await["is_compatible"], true);
    let r = check(V3_BREAKS, "latest").await;
    assert_eq!(r["is_compatible"], false);
    assert!(!r["messages"].as_array().unwrap().is_empty());

    // FORWARD: the old schema must read new data. Dropping a field with no default in the
    // reader is fine; V1 → V3 adds a required field the old reader ignores: compatible.
    for (level, v3_ok) in [
        ("FORWARD", true),
        ("FULL", false),
        ("NONE", true),
        ("BACKWARD_TRANSITIVE", false),
    ] {
        let (st, r) = call(
            &c,
            put.clone(),
            format!("{b}/config/{s}"),
            Some(json!({"compatibility": level})),
        )
        .await;
        assert_eq!(st, 200);
        assert_eq!(r["compatibility"], level);
        assert_eq!(
            check(V3_BREAKS, "latest").await["is_compatible"],
            v3_ok,
            "{level}"
        );
    }
    let (_, lvl) = call(&c, reqwest::Method::GET, format!("{b}/config/{s}"), None).await;
    assert_eq!(lvl["compatibilityLevel"], "BACKWARD_TRANSITIVE");
}

struct Registry(Child);

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(dir: &std::path::Path, port: u16) -> Registry {
    Registry(
        Command::new(env!("CARGO_BIN_EXE_locus-registry"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start locus-registry"),
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_up(c: &Client, url: &str) {
    for _ in 0..100 {
        if c.get(format!("{url}/subjects")).send().await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("registry at {url} did not start");
}

#[tokio::test]
async fn schemas_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let c = Client::new();
    let mut reg = start(dir.path(), port);
    wait_up(&c, &url).await;
    let (_, r) = register(&c, &url, "k-value", V1).await;
    let id = r["id"].clone();
    register(&c, &url, "k-value", V2).await;
    call(
        &c,
        reqwest::Method::PUT,
        format!("{url}/config"),
        Some(json!({"compatibility": "FULL"})),
    )
    .await;
    reg.0.kill().unwrap(); // SIGKILL
    reg.0.wait().unwrap();
    let _reg = start(dir.path(), port);
    wait_up(&c, &url).await;
    let (_, versions) = call(
        &c,
        reqwest::Method::GET,
        format!("{url}/subjects/k-value/versions"),
        None,
    )
    .await;
    assert_eq!(versions, json!([1, 2]));
    let (_, by_id) = call(
        &c,
        reqwest::Method::GET,
        format!("{url}/schemas/ids/{id}"),
        None,
    )
    .await;
    assert_eq!(by_id["schema"], json!(V1));
    let (_, g) = call(&c, reqwest::Method::GET, format!("{url}/config"), None).await;
    assert_eq!(g["compatibilityLevel"], "FULL");
}
