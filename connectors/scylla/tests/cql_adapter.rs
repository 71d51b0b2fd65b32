//! The real `scylla` driver against the local stack's Cassandra (through the CQL adapter
//! there, or straight against Scylla/Cassandra 4+ when LOCUS_CQL_ADDR points at one).

use locus_scylla::{ScyllaConfig, connect};
use scylla::client::session::Session;

fn addr() -> String {
    std::env::var("LOCUS_CQL_ADDR").unwrap_or_else(|_| "127.0.0.1:9042".into())
}

fn config() -> ScyllaConfig {
    ScyllaConfig {
        nodes: vec![addr()],
        // The local Cassandra 2.1 has no system_schema; a real cluster can set this.
        fetch_schema_metadata: std::env::var("LOCUS_CQL_FETCH_SCHEMA").is_ok(),
        ..Default::default()
    }
}

fn unique_keyspace(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())[..40].to_string()
}

async fn setup(prefix: &str) -> (Session, String) {
    let session = connect(&config())
        .await
        .expect("connect through the CQL adapter");
    let ks = unique_keyspace(prefix);
    session
        .query_unpaged(
            format!(
                "CREATE KEYSPACE {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
            ),
            (),
        )
        .await
        .expect("create keyspace");
    session
        .query_unpaged(
            format!(
                "CREATE TABLE {ks}.track (user_id text, bucket int, ts bigint, seq bigint, lat double, \
                 PRIMARY KEY ((user_id, bucket), ts, seq)) WITH CLUSTERING ORDER BY (ts DESC, seq DESC)"
            ),
            (),
        )
        .await
        .expect("create table");
    (session, ks)
}

#[tokio::test]
async fn prepared_inserts_and_clustering_ranges() {
    let (session, ks) = setup("adapter_range").await;
    let insert = session
        .prepare(format!(
            "INSERT INTO {ks}.track (user_id, bucket, ts, seq, lat) VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?"
        ))
        .await
        .expect("prepare insert");
    for i in 0..20i64 {
        session
            .execute_unpaged(
                &insert,
                ("u1", 7i32, 1_000 + i, i, i as f64, (1_000 + i) * 1000),
            )
            .await
            .expect("insert");
    }
    let select = session
        .prepare(format!(
            "SELECT ts, seq, lat FROM {ks}.track WHERE user_id = ? AND bucket = ? AND ts >= ? AND ts < ?"
        ))
        .await
        .expect("prepare select");
    let rows = session
        .execute_unpaged(&select, ("u1", 7i32, 1_005i64, 1_010i64))
        .await
        .expect("select")
        .into_rows_result()
        .expect("rows")
        .rows::<(i64, i64, f64)>()
        .expect("typed rows")
        .collect::<Result<Vec<_>, _>>()
        .expect("decode");
    let ts: Vec<i64> = rows.iter().map(|r| r.0).collect();
    assert_eq!(
        ts,
        vec![1_009, 1_008, 1_007, 1_006, 1_005],
        "descending clustering order"
    );

    // Paging through the driver: 20 rows, pages of 6.
    let mut stmt = scylla::statement::Statement::new(format!(
        "SELECT ts FROM {ks}.track WHERE user_id = 'u1' AND bucket = 7"
    ));
    stmt.set_page_size(6);
    use futures::TryStreamExt;
    let all: Vec<(i64,)> = session
        .query_iter(stmt, ())
        .await
        .expect("query_iter")
        .rows_stream::<(i64,)>()
        .expect("stream")
        .try_collect()
        .await
        .expect("pages");
    assert_eq!(all.len(), 20);
}

#[tokio::test]
async fn using_timestamp_keeps_the_newest_write() {
    let (session, ks) = setup("adapter_ts").await;
    let insert = session
        .prepare(format!(
            "INSERT INTO {ks}.track (user_id, bucket, ts, seq, lat) VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?"
        ))
        .await
        .expect("prepare");
    session
        .execute_unpaged(&insert, ("u", 1i32, 5i64, 1i64, 2.0f64, 2_000i64))
        .await
        .unwrap();
    // An older write (a replay, a late duplicate) is a no-op.
    session
        .execute_unpaged(&insert, ("u", 1i32, 5i64, 1i64, 1.0f64, 1_000i64))
        .await
        .unwrap();
    let (lat,) = session
        .query_unpaged(
            format!("SELECT lat FROM {ks}.track WHERE user_id = 'u' AND bucket = 1"),
            (),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .single_row::<(f64,)>()
        .unwrap();
    assert_eq!(lat, 2.0);
}

#[tokio::test]
async fn ttl_is_applied() {
    let (session, ks) = setup("adapter_ttl").await;
    let insert = session
        .prepare(format!(
            "INSERT INTO {ks}.track (user_id, bucket, ts, seq, lat) VALUES (?, ?, ?, ?, ?) USING TTL ?"
        ))
        .await
        .expect("prepare");
    session
        .execute_unpaged(&insert, ("u", 1i32, 5i64, 1i64, 2.0f64, 3600i32))
        .await
        .unwrap();
    let (ttl,) = session
        .query_unpaged(
            format!("SELECT TTL(lat) FROM {ks}.track WHERE user_id = 'u' AND bucket = 1"),
            (),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .single_row::<(Option<i32>,)>()
        .unwrap();
    let ttl = ttl.expect("a TTL is set");
    assert!((3590..=3600).contains(&ttl), "ttl {ttl}");
}

#[tokio::test]
async fn unreachable_node_is_a_clear_error() {
    let cfg = ScyllaConfig {
        nodes: vec!["127.0.0.1:1".into()],
        connect_timeout_ms: 2_000,
        fetch_schema_metadata: false,
        ..Default::default()
    };
    let err = connect(&cfg).await.unwrap_err().to_string();
    assert!(err.contains("127.0.0.1:1"), "{err}");
}
