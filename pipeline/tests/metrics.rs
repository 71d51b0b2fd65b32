//! The metrics contract: `locus run` (every stage in one process) exports exactly the metrics
//! docs/METRICS.md lists, with the same types — checked both ways, after a little traffic.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};

/// `name → type` of every metric family in Prometheus text.
fn exported(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_string(), it.next()?.to_string()))
        })
        .collect()
}

/// `name → type` of every row of the tables in docs/METRICS.md (`| \`name\` | type | …`).
fn documented() -> BTreeMap<String, String> {
    let doc = std::fs::read_to_string(repo().join("docs/METRICS.md")).unwrap();
    doc.lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let name = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            let kind = cells.get(2)?;
            name.starts_with("locus_")
                .then(|| (name.to_string(), kind.to_string()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_metric_of_locus_run_is_documented_and_every_documented_one_is_exported() {
    let s = Scope::new("metrics");
    s.create_topics().await;
    let env = vec![
        ("LOCUS_BRIDGE__TOPIC_TEMPLATE", s.template.clone()),
        ("LOCUS_BRIDGE__SHARE_GROUP", s.share_group.clone()),
        ("LOCUS_BRIDGE__CLIENT_ID", format!("{}-b1", s.prefix)),
        ("LOCUS_BRIDGE__MQTT_PORT", mqtt_port().to_string()),
        ("LOCUS_SCYLLA__KEYSPACE", unique("mx_")),
        ("LOCUS_SCYLLA__NODES", format!("[\"{}\"]", cql_addr())),
        ("LOCUS_HISTORY__GROUP", format!("{}-h", s.prefix)),
        ("LOCUS_CACHE__GROUP", format!("{}-c", s.prefix)),
        ("LOCUS_CACHE__KEY_PREFIX", s.prefix.clone()),
        ("LOCUS_CACHE__REDIS_URL", redis_url()),
    ];
    let (_run, port) = locus(&s, "run", &["run"], &env);
    wait_ready(port, Duration::from_secs(90)).await;

    // A fix and a malformed message through the bridge; the fix reaches every stage.
    let mut o = MqttOptions::new(unique("metrics-pub-"), "127.0.0.1", mqtt_port());
    o.set_keep_alive(Duration::from_secs(10));
    let (client, mut el) = AsyncClient::new(o, 10);
    let fix = format!(
        r#"{{"device_id":"d1","seq":1,"ts":{},"lat":52.5,"lon":13.4}}"#,
        now_ms()
    );
    for payload in [fix.as_str(), "{not json"] {
        client
            .publish(
                s.topic("acme", "u1"),
                QoS::AtLeastOnce,
                false,
                payload.to_string(),
            )
            .await
            .unwrap();
    }
    let mut acked = 0;
    while acked < 2 {
        match tokio::time::timeout(Duration::from_secs(10), el.poll()).await {
            Ok(Ok(Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            other => panic!("publishing failed: {other:?}"),
        }
    }
    // Until the fix is applied by history and cache and lag has been reported once.
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let t = metrics_text(port).await;
        let applied = |stage: &str| {
            t.lines().any(|l| {
                l.starts_with(&format!(
                    "locus_stage_applied_records_total{{stage=\"{stage}\"}} "
                )) && !l.ends_with(" 0")
            })
        };
        if applied("history")
            && applied("cache")
            && t.contains("locus_consumer_lag_records{")
            && t.contains("locus_bridge_dlq_messages_total{")
        {
            break t;
        }
        assert!(Instant::now() < deadline, "traffic did not show:\n{t}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    let (exported, documented) = (exported(&text), documented());
    let locus: BTreeMap<_, _> = exported
        .iter()
        .filter(|(k, _)| k.starts_with("locus_"))
        .collect();
    let undocumented: Vec<_> = locus
        .iter()
        .filter(|(k, t)| documented.get(**k) != Some(**t))
        .collect();
    assert!(
        undocumented.is_empty(),
        "exported but not in docs/METRICS.md (or with another type): {undocumented:?}"
    );
    let missing: Vec<_> = documented
        .iter()
        .filter(|(k, _)| !exported.contains_key(*k))
        .collect();
    assert!(
        missing.is_empty(),
        "in docs/METRICS.md but not exported by locus run: {missing:?}"
    );
    assert!(documented.len() >= 30, "the doc's tables were read");
}
