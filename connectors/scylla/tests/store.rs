//! The history store against the local stack's Cassandra (through the CQL adapter there, or
//! straight against Cassandra 3+ when LOCUS_CQL_ADDR points at one). The tombstone count is
//! read from Cassandra's query trace, whose wording Scylla's traces do not share.

use std::sync::Arc;

use locus_kafka::DeadLetter;
use locus_schemas::{Codec, LocationFix, RegistryConfig};
use locus_scylla::{
    BatchGrouping, HistoryConfig, HistorySink, HistoryStore, ScyllaConfig, connect, migrate,
    token_of,
};
use scylla::client::session::Session;
use scylla::statement::unprepared::Statement;

fn config() -> ScyllaConfig {
    ScyllaConfig {
        nodes: vec![std::env::var("LOCUS_CQL_ADDR").unwrap_or_else(|_| "127.0.0.1:9042".into())],
        keyspace: format!("store_{}", uuid::Uuid::new_v4().simple()),
        // The local Cassandra 2.1 has no system_schema; a real cluster can set this.
        fetch_schema_metadata: std::env::var("LOCUS_CQL_FETCH_SCHEMA").is_ok(),
        ..Default::default()
    }
}

fn fix(user: &str, seq: i64, ts: i64) -> LocationFix {
    LocationFix {
        tenant: "acme".into(),
        user_id: user.into(),
        device_id: format!("{user}-phone"),
        seq,
        ts,
        lat: 52.5,
        lon: 13.4,
        accuracy_m: None,
        altitude_m: None,
        speed_mps: None,
        heading_deg: None,
        battery_pct: None,
        activity: None,
        source: None,
        received_at: ts + 40,
    }
}

/// The tombstone cells Cassandra reports stepping over while reading `user`'s partition
/// (from the query's trace), and the live cells it read.
async fn cells_read(session: &Session, table: &str, user: &str) -> (u64, u64) {
    let mut select = Statement::new(format!(
        "SELECT * FROM {table} WHERE tenant = 'acme' AND user_id = '{user}' AND bucket = 0"
    ));
    select.set_tracing(true);
    let result = session.query_unpaged(select, ()).await.expect("select");
    let id = result
        .tracing_id()
        .expect("a traced query has a tracing id");
    // The events are written in the background: read until the read's own count is there
    // (other events name tombstones too). Read here rather than with the driver's
    // get_tracing_info, whose query names a column Cassandra 2.1's system_traces.sessions
    // lacks; system_traces is replicated twice, one node answers for this single-node stack.
    let mut events =
        Statement::new("SELECT activity FROM system_traces.events WHERE session_id = ?");
    events.set_consistency(scylla::statement::Consistency::One);
    let mut activities: Vec<String> = Vec::new();
    for _ in 0..100 {
        activities = session
            .query_unpaged(events.clone(), (id,))
            .await
            .expect("the trace's events")
            .into_rows_result()
            .expect("rows")
            .rows::<(Option<String>,)>()
            .expect("typed rows")
            .filter_map(|r| r.expect("a row").0)
            .collect();
        if let Some(counts) = activities.iter().find_map(|a| cell_counts(a)) {
            return counts;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("no cell count in the trace after 10 s: {activities:?}")
}

/// (live, tombstones) from Cassandra's "Read 3 live and 0 tombstone cells" (2.1) or "Read 1
/// live rows and 0 tombstone cells" (3 and later).
fn cell_counts(activity: &str) -> Option<(u64, u64)> {
    let words: Vec<&str> = activity.split_whitespace().collect();
    let live = match words[..] {
        ["Read", n, "live", ..] => n.parse().ok()?,
        _ => return None,
    };
    let tombstones = words
        .windows(3)
        .find(|w| w[0] == "and" && w[2].starts_with("tombstone"))?[1]
        .parse()
        .ok()?;
    Some((live, tombstones))
}

#[tokio::test]
async fn absent_optional_fields_are_left_out_not_written_as_tombstones() {
    let scylla = config();
    let history = HistoryConfig {
        // One bucket for every fix of the test: partition (acme, user, 0).
        bucket_hours: 24 * 365 * 100,
        ..Default::default()
    };
    let session = Arc::new(connect(&scylla).await.expect("connect"));
    migrate(&session, &scylla, &history).await.expect("migrate");
    let store = HistoryStore::prepare(session.clone(), &scylla, &history)
        .await
        .expect("prepare");
    let ks = &scylla.keyspace;
    let table = format!("{ks}.{}", history.table);

    // One fix of one partition (a plain insert) with no optional field at all.
    let bare = fix("ann", 1, 1_000);
    store.write_rows(&[&bare]).await.expect("write one");

    // Several fixes of one partition (one batch), each with another set of optional fields.
    let mut full = fix("bob", 1, 1_000);
    full.accuracy_m = Some(4.5);
    full.altitude_m = Some(35.25);
    full.speed_mps = Some(3.5);
    full.heading_deg = Some(270.0);
    full.battery_pct = Some(81);
    full.activity = Some("walking".into());
    full.source = Some("gps".into());
    let mut some = fix("bob", 2, 2_000);
    some.speed_mps = Some(12.0);
    some.source = Some("network".into());
    let none = fix("bob", 3, 3_000);
    store
        .write_rows(&[&full, &some, &none])
        .await
        .expect("write a batch");

    // Every fix reads back as written: present fields with their values, absent ones absent.
    let (ann, _) = store
        .track("acme", "ann", 0, 10_000, None, 100)
        .await
        .expect("ann's track");
    assert_eq!(ann, vec![bare]);
    let (bob, _) = store
        .track("acme", "bob", 0, 10_000, None, 100)
        .await
        .expect("bob's track");
    assert_eq!(bob, vec![full, some, none]);

    // And Cassandra stepped over no tombstone reading them: an absent field is no cell at all.
    // (Bound as null, each of ann's seven absent fields would be a tombstone cell.)
    let (live, tombstones) = cells_read(&session, &table, "ann").await;
    assert!(live > 0, "ann's row was read");
    assert_eq!(tombstones, 0, "tombstone cells in ann's partition");
    let (live, tombstones) = cells_read(&session, &table, "bob").await;
    assert!(live > 0, "bob's rows were read");
    assert_eq!(tombstones, 0, "tombstone cells in bob's partition");

    session
        .query_unpaged(format!("DROP KEYSPACE {ks}"), ())
        .await
        .expect("drop keyspace");
}

/// CQL writes the history sinks of this process made (`locus_history_batch_rows`' count).
/// Only the replica-set test writes through a sink, so no other test moves it.
fn batches_written() -> u64 {
    prometheus::gather()
        .iter()
        .find(|m| m.name() == "locus_history_batch_rows")
        .expect("the history sink's metrics are registered")
        .get_metric()[0]
        .get_histogram()
        .get_sample_count()
}

/// A history sink over `store` with `history`'s batching (decoded fixes go in through
/// `apply_fixes`, so its codec and dead letter are never used).
fn sink(store: &HistoryStore, history: &HistoryConfig) -> HistorySink {
    HistorySink::new(
        store.clone(),
        Codec::new(&RegistryConfig::default(), "unused").expect("codec"),
        DeadLetter::skip(),
        16,
        history.rows_per_batch,
        history.batch_grouping,
    )
}

/// The history store, its session and its table, in a keyspace of the test's own.
async fn store(history: &HistoryConfig) -> (ScyllaConfig, Arc<Session>, HistoryStore) {
    let scylla = config();
    let session = Arc::new(connect(&scylla).await.expect("connect"));
    migrate(&session, &scylla, history).await.expect("migrate");
    let store = HistoryStore::prepare(session.clone(), &scylla, history)
        .await
        .expect("prepare");
    (scylla, session, store)
}

#[tokio::test]
async fn replica_set_batches_write_every_row_and_tokens_match_the_server() {
    let history = HistoryConfig {
        batch_grouping: BatchGrouping::ReplicaSet,
        ..Default::default()
    };
    let (scylla, session, store) = store(&history).await;
    let ks = &scylla.keyspace;
    let table = format!("{ks}.{}", history.table);

    // 120 users, three fixes each, in two buckets (one of them negative, before 1970):
    // 240 partitions in one consumer batch, shuffled as Kafka would interleave them.
    let day = history.bucket_ms();
    let mut fixes: Vec<LocationFix> = (0..120)
        .flat_map(|u| {
            let user = format!("user-{u:03}");
            let base = if u % 2 == 0 { -day - 5_000 } else { 3 * day };
            [
                fix(&user, 1, base),
                fix(&user, 2, base + 1_000),
                fix(&user, 3, base + day),
            ]
        })
        .collect();
    fixes.sort_by_key(|f| (f.seq, f.user_id.clone()));
    let sink = sink(&store, &history);
    // The writes to expect: each replica set's rows in batches of `rows_per_batch`.
    let cluster = store.cluster();
    let mut rows_per_set: std::collections::HashMap<_, u64> = std::collections::HashMap::new();
    for f in &fixes {
        let set = store.replica_set(&cluster, &f.tenant, &f.user_id, store.bucket_of(f.ts));
        assert!(
            !set.is_empty(),
            "the replicas of {}'s partition are known",
            f.user_id
        );
        *rows_per_set.entry(set).or_default() += 1;
    }
    let expected: u64 = rows_per_set
        .values()
        .map(|n| n.div_ceil(history.rows_per_batch as u64))
        .sum();
    // On a single node without shards (the local Cassandra) every partition has the same
    // replica set: 45 writes of up to 8 rows, where grouping by partition makes 240.
    let nodes = cluster.get_nodes_info();
    if nodes.len() == 1 && nodes[0].sharder().is_none() {
        assert_eq!(
            rows_per_set.len(),
            1,
            "one replica set on a one-node cluster"
        );
    }
    locus_scylla::init_metrics();
    let writes_before = batches_written();
    tokio::time::timeout(std::time::Duration::from_secs(60), sink.apply_fixes(&fixes))
        .await
        .expect("every row written within 60 s");
    let writes = batches_written() - writes_before;
    assert_eq!(writes, expected, "CQL writes for 360 rows");

    // Every row is there, each user's in event-time order.
    for u in 0..120 {
        let user = format!("user-{u:03}");
        let (got, _) = store
            .track("acme", &user, -10 * day, 10 * day, None, 100)
            .await
            .expect("track");
        let mut want: Vec<LocationFix> = fixes
            .iter()
            .filter(|f| f.user_id == user)
            .cloned()
            .collect();
        want.sort_by_key(|f| f.ts);
        assert_eq!(got, want, "{user}'s track");
    }

    // The token the writer groups by is the one the server computes for the partition.
    let rows = session
        .query_unpaged(
            format!("SELECT tenant, user_id, bucket, token(tenant, user_id, bucket) FROM {table}"),
            (),
        )
        .await
        .expect("select tokens")
        .into_rows_result()
        .expect("rows");
    let mut partitions = 0;
    for row in rows
        .rows::<(String, String, i32, i64)>()
        .expect("typed rows")
    {
        let (tenant, user, bucket, token) = row.expect("a row");
        assert_eq!(
            token_of(&tenant, &user, bucket).value(),
            token,
            "token of ({tenant}, {user}, {bucket})"
        );
        partitions += 1;
    }
    // Every row came back with its partition's token: three per user.
    assert_eq!(partitions, 360, "rows read back with their tokens");

    session
        .query_unpaged(format!("DROP KEYSPACE {ks}"), ())
        .await
        .expect("drop keyspace");
}

#[tokio::test]
async fn a_refused_batch_is_written_again_row_by_row() {
    let history = HistoryConfig::default();
    let (scylla, session, store) = store(&history).await;
    let ks = &scylla.keyspace;
    // Seven good fixes and, in the same batch, one whose user id is longer than a partition
    // key may be (65,535 bytes): the nodes refuse the whole batch. (The bridge admits ids of
    // 128 bytes at most; such a record can only come from another producer.)
    let mut fixes: Vec<LocationFix> = (0..7).map(|u| fix(&format!("ok-{u}"), 1, 1_000)).collect();
    fixes.insert(3, fix(&"x".repeat(70_000), 1, 1_000));
    assert!(fixes.len() <= history.rows_per_batch, "one batch");
    let sink = sink(&store, &history);
    // The refused row itself is retried for as long as it takes (it stalls the write); the
    // seven others are in Cassandra meanwhile.
    let writing = tokio::spawn(async move { sink.apply_fixes(&fixes).await });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut missing: Vec<String> = Vec::new();
    while std::time::Instant::now() < deadline {
        missing.clear();
        for u in 0..7 {
            let user = format!("ok-{u}");
            let (got, _) = store
                .track("acme", &user, 0, 10_000, None, 10)
                .await
                .expect("track");
            if got.len() != 1 {
                missing.push(user);
            }
        }
        if missing.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    writing.abort();
    assert!(
        missing.is_empty(),
        "not written beside the refused row: {missing:?}"
    );

    session
        .query_unpaged(format!("DROP KEYSPACE {ks}"), ())
        .await
        .expect("drop keyspace");
}
