//! Where the local stack is, unique names, the clock.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Now, in ms since the epoch (event times of test fixes).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_locus"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn brokers() -> String {
    std::env::var("LOCUS_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn registry_url() -> String {
    std::env::var("LOCUS_REGISTRY_URL").unwrap_or_else(|_| "http://127.0.0.1:8081".into())
}

/// The local stack's Redis (database 0; tests keep apart by key prefix).
#[allow(dead_code)]
pub fn redis_url() -> String {
    format!(
        "redis://127.0.0.1:{}/0",
        std::env::var("LOCUS_REDIS_PORT").unwrap_or_else(|_| "6379".into())
    )
}

pub fn mqtt_port() -> u16 {
    std::env::var("LOCUS_MQTT_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(1883)
}

pub fn cql_addr() -> String {
    std::env::var("LOCUS_CQL_ADDR").unwrap_or_else(|_| "127.0.0.1:9042".into())
}
