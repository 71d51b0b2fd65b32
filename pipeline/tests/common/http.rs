//! Metrics, tokens and data routes over HTTP.
#![allow(dead_code)]

use super::*;
use std::time::{Duration, Instant};

/// The text of a process's `/metrics`.
pub async fn metrics_text(port: u16) -> String {
    reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

pub async fn metric(port: u16, name: &str) -> f64 {
    sum_of(&metrics_text(port).await, name)
}

/// The sum of the series of `name` (every label set) in Prometheus text.
fn sum_of(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until the process on `port` answers `/metrics` with `name` at least `value`
/// (before it listens, or while the metric is lower, it polls again).
pub async fn wait_metric(port: u16, name: &str, value: f64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await
            && let Ok(text) = r.text().await
            && sum_of(&text, name) >= value
        {
            return;
        }
        assert!(Instant::now() < deadline, "{name} did not reach {value}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The HS256 secret of `dev/locus.dev.toml`, which the tests' `locus` processes use.
pub const DEV_SECRET: &str = "locus-dev-secret-change-me-in-production";

/// A token for `tenant` (every user of it, or only `users`), valid for `ttl_s` seconds.
pub fn token(tenant: &str, users: Option<&[&str]>, ttl_s: i64) -> String {
    let now_s = now_ms() / 1000;
    locus_sse::mint_hs256(
        DEV_SECRET,
        &locus_sse::Claims {
            tenant: tenant.into(),
            users: users.map(|u| u.iter().map(|s| s.to_string()).collect()),
            exp: (now_s + ttl_s).max(0) as u64,
            sub: None,
            ..Default::default()
        },
    )
    .unwrap()
}

/// GET of a data route (`/v1/tenants/{tenant}/…`) with a token for the tenant it names.
pub async fn get_data(port: u16, path: &str) -> reqwest::Response {
    let tenant = path.split('/').nth(3).unwrap_or_default();
    reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}{path}"))
        .bearer_auth(token(tenant, None, 600))
        .send()
        .await
        .unwrap()
}
