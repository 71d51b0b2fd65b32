//! The history store against the local stack's Cassandra (through the CQL adapter there, or
//! straight against Cassandra 3+ when LOCUS_CQL_ADDR points at one). The tombstone count is
//! read from Cassandra's query trace, whose wording Scylla's traces do not share.

use std::sync::Arc;

use locus_schemas::LocationFix;
use locus_scylla::{HistoryConfig, HistoryStore, ScyllaConfig, connect, migrate};
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
    store.write_partition(&[&bare]).await.expect("write one");

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
        .write_partition(&[&full, &some, &none])
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
