//! The bridge end to end, against the local stack's Mosquitto, Kafka (tansu) and registry:
//! what devices publish is what arrives on Kafka, bad input goes to the DLQ, and nothing is
//! lost when Kafka goes away or the bridge is killed.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use locus_schemas::{Codec, LocationFix, RegistryConfig};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};

fn codec(topic: &str) -> Codec {
    Codec::new(
        &RegistryConfig {
            url: registry_url(),
            ..Default::default()
        },
        topic,
    )
    .unwrap()
}

async fn decode_all(topic: &str, records: &[Record]) -> Vec<LocationFix> {
    let c = codec(topic);
    let mut out = vec![];
    for r in records {
        out.push(c.decode(&r.value).await.expect("every record decodes"));
    }
    out
}

fn identities(fixes: &[LocationFix]) -> BTreeSet<(String, String, i64)> {
    fixes
        .iter()
        .map(|f| (f.user_id.clone(), f.device_id.clone(), f.seq))
        .collect()
}

/// Distinct fixes among `records` (user, device and sequence from the Avro value): a fix
/// written twice after a redelivery counts once.
fn distinct_fixes(records: &[Record]) -> usize {
    records
        .iter()
        .map(fix_identity)
        .collect::<BTreeSet<_>>()
        .len()
}

/// Fails, with a few examples and what the broker holds, if a fix the devices had
/// acknowledged is not in `got` (the fixes of `records`, read from the scope's topic).
fn assert_none_lost(
    s: &Scope,
    records: &[Record],
    expected: &[(String, String, i64)],
    got: &BTreeSet<(String, String, i64)>,
) {
    let missing: Vec<_> = expected
        .iter()
        .filter(|e| !got.contains(*e))
        .cloned()
        .collect();
    if !missing.is_empty() {
        let why = explain_missing(s, records, &missing);
        panic!(
            "lost {} fixes, e.g. {:?}\n{why}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
    }
}

/// Publishes raw payloads at QoS1 and waits for the broker's acknowledgements.
async fn publish(messages: &[(String, Vec<u8>)]) {
    let mut o = MqttOptions::new(unique("test-pub-"), "127.0.0.1", mqtt_port());
    o.set_keep_alive(Duration::from_secs(10));
    let (client, mut el) = AsyncClient::new(o, 100);
    for (topic, payload) in messages {
        client
            .publish(topic.clone(), QoS::AtLeastOnce, false, payload.clone())
            .await
            .unwrap();
    }
    let mut acked = 0;
    while acked < messages.len() {
        match tokio::time::timeout(Duration::from_secs(10), el.poll()).await {
            Ok(Ok(Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            other => panic!("publishing failed: {other:?}"),
        }
    }
    let _ = client.disconnect().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn published_fixes_arrive_keyed_ordered_and_decodable() {
    let s = Scope::new("bridge-e2e");
    s.create_topics().await;
    let (_bridge, port) = s.bridge(&unique("b-"), &[]);
    wait_ready(port, Duration::from_secs(30)).await;

    let report = s.sim(&[
        "--devices",
        "20",
        "--connections",
        "2",
        "--fixes-per-device",
        "10",
        "--interval-ms",
        "50",
        "--jitter-ms",
        "10",
    ]);
    let expected = expected_fixes(&report);
    assert_eq!(expected.len(), 200);

    let records = consume_until(&s.brokers, &s.locations, Duration::from_secs(30), |r| {
        r.len() >= 200
    });
    assert_eq!(records.len(), 200, "exactly the published fixes");
    let fixes = decode_all(&s.locations, &records).await;
    let got: Vec<(String, String, i64)> = {
        let mut v: Vec<_> = identities(&fixes).into_iter().collect();
        v.sort();
        v
    };
    assert_eq!(got, expected);

    // Key = user id, and one user always on one partition, in device order.
    let mut partition_of: HashMap<Vec<u8>, i32> = HashMap::new();
    let mut last_seq: HashMap<(i32, Vec<u8>), i64> = HashMap::new();
    let mut by_offset = records.clone();
    by_offset.sort_by_key(|r| (r.partition, r.offset));
    for (r, f) in records.iter().zip(&fixes) {
        assert_eq!(r.key, f.user_id.as_bytes());
        assert_eq!(
            *partition_of.entry(r.key.clone()).or_insert(r.partition),
            r.partition
        );
        // One header, the tenant (consumers pass over other tenants' fixes by it).
        assert_eq!(r.headers.len(), 1, "{:?}", r.headers);
        assert_eq!(r.headers["locus-tenant"], f.tenant);
        assert!(f.received_at >= f.ts);
    }
    let c = codec(&s.locations);
    for r in &by_offset {
        let f = c.decode(&r.value).await.unwrap();
        let prev = last_seq.insert((r.partition, r.key.clone()), f.seq);
        assert!(
            prev.is_none_or(|p| p < f.seq),
            "per-user order kept on the partition"
        );
    }

    // A Confluent client in another language reads the same bytes.
    let hex: Vec<String> = records
        .iter()
        .take(5)
        .map(|r| r.value.iter().map(|b| format!("{b:02x}")).collect())
        .collect();
    let mut py = Command::new(
        tansu_bin()
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .join("venv/bin/python"),
    )
    .arg(repo().join("pipeline/tests/confluent_decode.py"))
    .arg(&s.locations)
    .env("LOCUS_REGISTRY_URL", registry_url())
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .spawn()
    .expect("python venv from dev/stack");
    use std::io::Write;
    py.stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(&hex).unwrap().as_bytes())
        .unwrap();
    let out = py.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "confluent-kafka AvroDeserializer failed"
    );
    let decoded: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    for (d, f) in decoded.iter().zip(&fixes) {
        assert_eq!(d["user_id"], f.user_id.as_str());
        assert_eq!(d["seq"], f.seq);
        assert!((d["lat"].as_f64().unwrap() - f.lat).abs() < 1e-9);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn batches_and_every_kind_of_bad_input() {
    let s = Scope::new("bridge-bad");
    s.create_topics().await;
    let (_bridge, port) = s.bridge(
        &unique("b-"),
        &[("LOCUS_BRIDGE__MAX_PAYLOAD_BYTES", "2048".into())],
    );
    wait_ready(port, Duration::from_secs(30)).await;
    let now = now_ms();
    let fix = |seq: i64, lat: f64| {
        format!(r#"{{"device_id":"d1","seq":{seq},"ts":{now},"lat":{lat},"lon":13.4}}"#)
    };
    let t = s.topic("acme", "u1");
    let messages: Vec<(String, Vec<u8>, Option<&str>)> = vec![
        (
            t.clone(),
            format!("[{},{},{}]", fix(1, 52.0), fix(2, 52.1), fix(3, 52.2)).into_bytes(),
            None,
        ),
        (
            t.clone(),
            b"not json at all".to_vec(),
            Some("malformed_payload"),
        ),
        (
            t.clone(),
            b"{\"device_id\": ".to_vec(),
            Some("malformed_json"),
        ),
        (t.clone(), fix(4, 91.0).into_bytes(), Some("out_of_range")),
        (
            t.clone(),
            format!(r#"{{"device_id":"d1","seq":5,"ts":{now},"lat":1,"lon":2,"mood":"happy"}}"#)
                .into_bytes(),
            Some("unknown_field"),
        ),
        (t.clone(), vec![b' '; 4096], Some("oversize")),
        (
            t.clone(),
            format!(r#"{{"user_id":"u2","device_id":"d1","seq":6,"ts":{now},"lat":1,"lon":2}}"#)
                .into_bytes(),
            Some("user_mismatch"),
        ),
        (
            t.clone(),
            format!(
                r#"{{"device_id":"d1","seq":7,"ts":{},"lat":1,"lon":2}}"#,
                now + 86_400_000
            )
            .into_bytes(),
            Some("ts_in_future"),
        ),
        (
            format!("{}/acme/u1/elsewhere", s.prefix),
            fix(8, 1.0).into_bytes(),
            None,
        ), // not subscribed: never seen
        // A batch with one bad element: the good ones go on, the message goes to the DLQ too.
        (
            t.clone(),
            format!("[{},{}]", fix(9, 10.0), fix(10, -100.0)).into_bytes(),
            Some("out_of_range"),
        ),
        // And the bridge keeps going.
        (t.clone(), fix(11, 52.3).into_bytes(), None),
    ];
    publish(
        &messages
            .iter()
            .map(|(t, p, _)| (t.clone(), p.clone()))
            .collect::<Vec<_>>(),
    )
    .await;

    let records = consume_until(&s.brokers, &s.locations, Duration::from_secs(20), |r| {
        r.len() >= 5
    });
    let seqs: BTreeSet<i64> = decode_all(&s.locations, &records)
        .await
        .iter()
        .map(|f| f.seq)
        .collect();
    assert_eq!(seqs, BTreeSet::from([1, 2, 3, 9, 11]));

    let expected_reasons: Vec<&str> = messages.iter().filter_map(|(_, _, r)| *r).collect();
    let dlq = consume_until(&s.brokers, &s.dlq, Duration::from_secs(20), |r| {
        r.len() >= expected_reasons.len()
    });
    let mut reasons: Vec<String> = dlq
        .iter()
        .map(|r| r.headers["locus-reason"].clone())
        .collect();
    reasons.sort();
    let mut want: Vec<String> = expected_reasons.iter().map(|r| r.to_string()).collect();
    want.sort();
    assert_eq!(reasons, want);
    for r in &dlq {
        assert_eq!(r.headers["locus-mqtt-topic"], t);
        assert!(!r.headers["locus-error"].is_empty());
        // The original bytes, untouched.
        assert!(messages.iter().any(|(_, p, _)| *p == r.value));
    }
    let partial = dlq
        .iter()
        .find(|r| r.headers.contains_key("locus-rejected-indexes"))
        .expect("batch element rejection");
    assert_eq!(partial.headers["locus-rejected-indexes"], "1");
    // Acknowledged after Kafka's delivery report, which can come after a reader saw the
    // record: waited for, then exact.
    let acked = "locus_bridge_messages_acked_total";
    wait_metric(port, acked, 10.0, Duration::from_secs(10)).await;
    assert_eq!(metric(port, acked).await, 10.0);
}

/// The bridge reaches a broker over TLS: a private Mosquitto with a TLS listener whose
/// certificate comes from a CA generated here (openssl); a fix published over TLS arrives.
#[tokio::test(flavor = "multi_thread")]
async fn the_bridge_speaks_tls_to_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let path = |f: &str| d.join(f).to_string_lossy().into_owned();
    TestCa::new(d);
    let port = free_port();
    std::fs::write(
        d.join("mosquitto.conf"),
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nuser root\npersistence false\n\
             cafile {}\ncertfile {}\nkeyfile {}\n",
            path("ca.pem"),
            path("server.pem"),
            path("server.key")
        ),
    )
    .unwrap();
    let mosquitto = ["/usr/sbin/mosquitto", "mosquitto"]
        .into_iter()
        .find(|m| !m.starts_with('/') || std::path::Path::new(m).exists())
        .unwrap();
    let _broker = Proc {
        child: Command::new(mosquitto)
            .args(["-c", &path("mosquitto.conf")])
            .stdout(Stdio::null())
            .stderr(log_file("bridge-tls-mosquitto"))
            .spawn()
            .expect("start mosquitto"),
        name: "mosquitto-tls".into(),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the TLS listener did not open");
        std::thread::sleep(Duration::from_millis(50));
    }

    let s = Scope::new("bridge-tls");
    s.create_topics().await;
    // Directly (rumqttc's TLS), then through the pausing relay (the relay's TLS); each in
    // a share group of its own, the first stopped before the second starts.
    for (seq, pause_reads) in [(7, false), (8, true)] {
        let (mut bridge, hport) = s.bridge(
            &unique("b-"),
            &[
                ("LOCUS_BRIDGE__MQTT_PORT", port.to_string()),
                ("LOCUS_BRIDGE__TLS_CA_FILE", path("ca.pem")),
                ("LOCUS_BRIDGE__PAUSE_READS", pause_reads.to_string()),
                (
                    "LOCUS_BRIDGE__SHARE_GROUP",
                    format!("{}-{seq}", s.share_group),
                ),
            ],
        );
        wait_ready(hport, Duration::from_secs(30)).await;
        publish_over_tls(port, &path("ca.pem"), &s.topic("acme", "u1"), seq);
        let records = consume_until(&s.brokers, &s.locations, Duration::from_secs(30), |r| {
            r.len() >= (seq - 6) as usize
        });
        let fixes = decode_all(&s.locations, &records).await;
        assert_eq!(
            fixes.len(),
            (seq - 6) as usize,
            "pause_reads = {pause_reads}"
        );
        let last = fixes.last().unwrap();
        assert_eq!((last.user_id.as_str(), last.seq), ("u1", seq));
        assert!(bridge.term().success());
    }
}

fn publish_over_tls(port: u16, ca: &str, topic: &str, seq: i64) {
    let fix = format!(
        r#"{{"device_id":"d1","seq":{seq},"ts":{},"lat":52.5,"lon":13.4}}"#,
        now_ms()
    );
    let ok = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-V",
            "mqttv5",
        ])
        .args(["--cafile", ca, "-t", topic, "-m", &fix])
        .status()
        .expect("mosquitto_pub")
        .success();
    assert!(ok, "publishing over TLS");
}

/// Scale-down: a removed replica's persistent session keeps its share of the traffic while
/// nobody reads it. `locus bridge drain --client-id` bridges everything that session holds
/// and ends it; afterwards the remaining replica gets every new message.
#[tokio::test(flavor = "multi_thread")]
async fn drain_empties_and_ends_a_removed_replicas_session() {
    let s = Scope::new("bridge-drain");
    s.create_topics().await;
    let gone = unique("gone-");
    let (mut b, port) = s.bridge(&gone, &[]);
    wait_ready(port, Duration::from_secs(30)).await;
    b.term();
    let now = now_ms();
    let fixes = |from: i64, n: i64| -> Vec<(String, Vec<u8>)> {
        (from..from + n)
            .map(|seq| {
                let payload =
                    format!(r#"{{"device_id":"d1","seq":{seq},"ts":{now},"lat":52.5,"lon":13.4}}"#);
                (
                    s.topic("acme", &format!("u{}", seq % 5)),
                    payload.into_bytes(),
                )
            })
            .collect()
    };
    // Queued for the stopped replica's session, the only member of the share group.
    publish(&fixes(0, 50)).await;

    let out = s
        .bridge_command(
            &gone,
            &["drain", "--client-id", &gone, "--idle-ms", "1500"],
            free_port(),
        )
        .stdout(Stdio::piped())
        .output()
        .expect("run locus bridge drain");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "drain failed: {stdout}");
    assert!(stdout.contains("drained 50 messages"), "{stdout}");
    let records = consume_until(&s.brokers, &s.locations, Duration::from_secs(20), |r| {
        r.len() >= 50
    });
    assert_eq!(
        distinct_fixes(&records),
        50,
        "the session's messages, each bridged"
    );

    // The session is gone: the one replica left receives every new message.
    let (_b2, port2) = s.bridge(&unique("kept-"), &[]);
    wait_ready(port2, Duration::from_secs(30)).await;
    publish(&fixes(50, 20)).await;
    let records = consume_until(
        &s.brokers,
        &s.locations,
        Duration::from_secs(20),
        distinct_fixes_at_least(70),
    );
    assert_eq!(
        distinct_fixes(&records),
        70,
        "no message left with the drained session"
    );
}

/// Tenant, user and device ids outside the safe set (letters, digits, `. _ ~ - @`) are refused
/// at the bridge with reason `bad_id`, whether they come from the topic or the payload: an id
/// like `a:b` could collide in a Redis key, one like `<img …>` could become markup.
#[tokio::test(flavor = "multi_thread")]
async fn ids_outside_the_safe_set_go_to_the_dlq() {
    let s = Scope::new("bridge-ids");
    s.create_topics().await;
    let (_bridge, port) = s.bridge(&unique("b-"), &[]);
    wait_ready(port, Duration::from_secs(30)).await;
    let now = now_ms();
    let fix = |device: &str, seq: i64| {
        format!(r#"{{"device_id":"{device}","seq":{seq},"ts":{now},"lat":52.5,"lon":13.4}}"#)
    };
    publish(&[
        (s.topic("acme", "a:b"), fix("d1", 1).into_bytes()),
        (
            s.topic("acme", "<img src=x onerror=alert(1)>"),
            fix("d1", 2).into_bytes(),
        ),
        (s.topic("acme", "u1"), fix("d:1", 3).into_bytes()),
        (
            s.topic("acme", "alice@acme.example"),
            fix("d-1", 4).into_bytes(),
        ),
    ])
    .await;
    let records = consume_until(&s.brokers, &s.locations, Duration::from_secs(30), |r| {
        !r.is_empty()
    });
    let fixes = decode_all(&s.locations, &records).await;
    assert_eq!(fixes.len(), 1);
    assert_eq!(fixes[0].user_id, "alice@acme.example");
    let dlq = consume_until(&s.brokers, &s.dlq, Duration::from_secs(30), |r| {
        r.len() >= 3
    });
    assert_eq!(dlq.len(), 3);
    for r in &dlq {
        assert_eq!(r.headers["locus-reason"], "bad_id", "{:?}", r.headers);
    }
}

/// One message within the MQTT packet limit but over Kafka's message size (~1 MB) cannot stop
/// the bridge: its DLQ record keeps the first `bridge.max_dlq_value_bytes` and says so, and a
/// valid fix published right after it arrives. (Before, the DLQ record was refused by Kafka
/// and retried forever, and the replica's ingest stopped behind it.)
#[tokio::test(flavor = "multi_thread")]
async fn a_message_too_large_for_kafka_does_not_stop_the_bridge() {
    let s = Scope::new("bridge-huge");
    s.create_topics().await;
    let (_bridge, port) = s.bridge(&unique("b-"), &[]);
    wait_ready(port, Duration::from_secs(30)).await;
    let now = now_ms();
    let t = s.topic("acme", "u1");
    let good = format!(r#"{{"device_id":"d1","seq":1,"ts":{now},"lat":52.5,"lon":13.4}}"#);
    publish(&[
        (t.clone(), vec![b'x'; 1_000_500]),
        (t.clone(), good.into_bytes()),
    ])
    .await;

    let records = consume_until(&s.brokers, &s.locations, Duration::from_secs(30), |r| {
        !r.is_empty()
    });
    let fixes = decode_all(&s.locations, &records).await;
    assert_eq!(fixes.len(), 1, "the valid fix after the huge message");
    assert_eq!(fixes[0].seq, 1);

    let dlq = consume_until(&s.brokers, &s.dlq, Duration::from_secs(30), |r| {
        !r.is_empty()
    });
    assert_eq!(dlq.len(), 1);
    let r = &dlq[0];
    assert_eq!(r.headers["locus-reason"], "oversize");
    assert_eq!(r.headers["locus-truncated"], "true");
    assert_eq!(r.headers["locus-original-bytes"], "1000500");
    assert_eq!(
        r.value,
        vec![b'x'; 262_144],
        "the first max_dlq_value_bytes bytes"
    );
    // Acknowledged after Kafka's delivery report, which can come after a reader saw the
    // record: waited for, then exact.
    let acked = "locus_bridge_messages_acked_total";
    wait_metric(port, acked, 2.0, Duration::from_secs(10)).await;
    assert_eq!(metric(port, acked).await, 2.0);
}

/// Kafka is down for 30 s: nothing is acknowledged to the broker meanwhile (counted where
/// the broker receives it); the bridge stops reading (its read gate closes: the broker sends
/// beyond the receive maximum) yet keeps its one
/// connection (keep-alive 5 s: the relay answers the pings whose answers wait behind the
/// held messages); once Kafka is back every fix arrives and every message is acknowledged.
#[tokio::test(flavor = "multi_thread")]
async fn kafka_down_for_30s_loses_nothing() {
    let mut kafka = Private::kafka();
    // A broker that sends beyond the bridge's receive maximum, as Mosquitto can for shared
    // subscriptions: the bridge must stop reading.
    let tap = MqttTap::ignoring_receive_maximum(mqtt_port()).await;
    let mut s = Scope::new("bridge-outage");
    s.brokers = kafka.addr();
    s.create_topics().await;
    let client_id = unique("b-");
    let env = [
        ("LOCUS_BRIDGE__MQTT_PORT", tap.port.to_string()),
        ("LOCUS_BRIDGE__MAX_IN_FLIGHT", "100".to_string()),
        ("LOCUS_BRIDGE__MAX_HELD_MESSAGES", "50".to_string()),
        ("LOCUS_BRIDGE__KEEP_ALIVE_S", "5".to_string()),
    ];
    // The session exists; a backlog of 1,000 fixes waits in it.
    let (mut bridge, port) = s.bridge(&client_id, &env);
    wait_ready(port, Duration::from_secs(30)).await;
    bridge.term();
    let backlog = s.sim(&[
        "--devices",
        "10",
        "--fixes-per-device",
        "100",
        "--interval-ms",
        "1",
        "--jitter-ms",
        "0",
    ]);
    kafka.stop();
    let acked_before = tap.pubacks();
    let (_bridge, port) = s.bridge(&client_id, &env);
    // Kafka is down, so the bridge is not ready: wait until it has received messages.
    wait_metric(
        port,
        "locus_bridge_messages_received_total",
        1.0,
        Duration::from_secs(30),
    )
    .await;
    // And 10 devices go on publishing, one fix every 200 ms each, for ~20 s.
    let (mut sim, report_path) = s.sim_background(&[
        "--devices",
        "10",
        "--fixes-per-device",
        "100",
        "--interval-ms",
        "200",
        "--jitter-ms",
        "0",
        "--seq-start",
        "1000",
    ]);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        metric(port, "locus_bridge_fixes_produced_total").await,
        0.0,
        "nothing is produced while Kafka is down"
    );
    assert_eq!(
        tap.pubacks(),
        acked_before,
        "the broker received no PUBACK while Kafka was down"
    );
    let in_flight = metric(port, "locus_bridge_in_flight_messages").await;
    println!(
        "during the outage: received {}, in flight {in_flight}, held {}, read pauses {}",
        metric(port, "locus_bridge_messages_received_total").await,
        metric(port, "locus_bridge_overflow_messages").await,
        metric(port, "locus_bridge_read_pauses_total").await
    );
    assert!(in_flight <= 600.0, "bounded in flight: {in_flight}");
    assert!(
        metric(port, "locus_bridge_read_pauses_total").await >= 1.0,
        "the read gate closed"
    );
    assert_eq!(
        (
            metric(port, "locus_bridge_mqtt_connection_errors_total").await,
            tap.connections()
        ),
        (0.0, 2),
        "one connection per process: no keep-alive timeout behind the closed gate"
    );
    kafka.resume();
    assert!(sim.child.wait().unwrap().success());
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report_path).unwrap()).unwrap();
    let mut expected = expected_fixes(&backlog);
    expected.extend(expected_fixes(&report));
    assert_eq!(expected.len(), 2000);
    let records = consume_until(
        &s.brokers,
        &s.locations,
        Duration::from_secs(60),
        distinct_fixes_at_least(2000),
    );
    let got = identities(&decode_all(&s.locations, &records).await);
    assert_none_lost(&s, &records, &expected, &got);
    // Every message the bridge received is acknowledged at the broker.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let received = metric(port, "locus_bridge_messages_received_total").await;
        if tap.pubacks() - acked_before == received as u64 && received >= 2000.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the broker received {} PUBACKs for {received} messages",
            tap.pubacks() - acked_before
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(tap.connections(), 2);
}

/// SIGTERM under load: the bridge acknowledges everything Kafka took and disconnects
/// cleanly, so the next process with the same client id is sent only what was not produced:
/// no fix is written twice.
/// Ready means subscribed: a bridge with a new session (a first deploy, a new replica) is
/// not ready until the broker granted its shared subscription, so what devices publish once
/// it is ready reaches Kafka. Here the broker takes the SUBSCRIBE 4 s late.
#[tokio::test(flavor = "multi_thread")]
async fn ready_only_once_subscribed() {
    let tap = MqttTap::holding_subscribe(mqtt_port(), Duration::from_secs(4)).await;
    let s = Scope::new("bridge-ready");
    s.create_topics().await;
    let env = [("LOCUS_BRIDGE__MQTT_PORT", tap.port.to_string())];
    let (_bridge, port) = s.bridge(&unique("b-"), &env);
    wait_ready(port, Duration::from_secs(30)).await;
    let report = s.sim(&[
        "--devices",
        "5",
        "--fixes-per-device",
        "2",
        "--interval-ms",
        "10",
    ]);
    let expected = expected_fixes(&report);
    assert_eq!(expected.len(), 10);
    let records = consume_until(&s.brokers, &s.locations, Duration::from_secs(30), |r| {
        r.len() >= 10
    });
    let got = identities(&decode_all(&s.locations, &records).await);
    assert_none_lost(&s, &records, &expected, &got);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_under_load_sends_nothing_twice() {
    let s = Scope::new("bridge-term");
    s.create_topics().await;
    let client_id = unique("b-");
    let (mut bridge, port) = s.bridge(&client_id, &[]);
    wait_ready(port, Duration::from_secs(30)).await;
    // 20 devices, one fix every 10 ms each: ~2,000 messages a second, for ~3 s.
    let (mut sim, report_path) = s.sim_background(&[
        "--devices",
        "20",
        "--connections",
        "4",
        "--fixes-per-device",
        "300",
        "--interval-ms",
        "10",
        "--jitter-ms",
        "0",
    ]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = bridge.term();
    assert!(status.success(), "the bridge ended cleanly: {status}");
    let (_bridge, port) = s.bridge(&client_id, &[]);
    wait_ready(port, Duration::from_secs(30)).await;
    assert!(sim.child.wait().unwrap().success());
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report_path).unwrap()).unwrap();
    let expected = expected_fixes(&report);
    assert_eq!(expected.len(), 6000);
    let records = consume_until(
        &s.brokers,
        &s.locations,
        Duration::from_secs(60),
        distinct_fixes_at_least(6000),
    );
    // Allow a moment for anything sent again to show.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let records = consume_until(&s.brokers, &s.locations, Duration::from_secs(10), |r| {
        r.len() >= records.len()
    });
    let got = identities(&decode_all(&s.locations, &records).await);
    assert_none_lost(&s, &records, &expected, &got);
    assert_eq!(
        records.len(),
        got.len(),
        "{} fixes written twice after the SIGTERM",
        records.len() - got.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bridge_killed_mid_stream_loses_nothing() {
    let s = Scope::new("bridge-kill");
    s.create_topics().await;
    let client_id = unique("b-");
    let (mut bridge, port) = s.bridge(&client_id, &[]);
    wait_ready(port, Duration::from_secs(30)).await;
    let (mut sim, report_path) = s.sim_background(&[
        "--devices",
        "10",
        "--fixes-per-device",
        "100",
        "--interval-ms",
        "100",
        "--jitter-ms",
        "0",
    ]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    bridge.kill9();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The same client id: the broker kept its session and the unacknowledged messages.
    let (_bridge, port) = s.bridge(&client_id, &[]);
    wait_ready(port, Duration::from_secs(30)).await;
    assert!(sim.child.wait().unwrap().success());
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report_path).unwrap()).unwrap();
    let expected = expected_fixes(&report);
    assert_eq!(expected.len(), 1000);
    let records = consume_until(
        &s.brokers,
        &s.locations,
        Duration::from_secs(60),
        distinct_fixes_at_least(1000),
    );
    let got = identities(&decode_all(&s.locations, &records).await);
    assert_none_lost(&s, &records, &expected, &got);
    println!(
        "records {} for {} fixes ({} duplicates after the kill)",
        records.len(),
        expected.len(),
        records.len() - got.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_share_the_load() {
    let s = Scope::new("bridge-share");
    s.create_topics().await;
    // One replica reads through the relay (which writes its PUBACKs), the other connects
    // directly (rumqttc writes them): both ways deliver and acknowledge everything.
    let (id_a, id_b) = (unique("a-"), unique("b-"));
    let direct = [("LOCUS_BRIDGE__PAUSE_READS", "false".to_string())];
    let (mut bridge_a, port_a) = s.bridge(&id_a, &[]);
    let (mut bridge_b, port_b) = s.bridge(&id_b, &direct);
    wait_ready(port_a, Duration::from_secs(30)).await;
    wait_ready(port_b, Duration::from_secs(30)).await;
    let report = s.sim(&[
        "--devices",
        "30",
        "--connections",
        "3",
        "--fixes-per-device",
        "10",
        "--interval-ms",
        "50",
    ]);
    let expected = expected_fixes(&report);
    let records = consume_until(&s.brokers, &s.locations, Duration::from_secs(30), |r| {
        r.len() >= expected.len()
    });
    let got = identities(&decode_all(&s.locations, &records).await);
    assert_eq!(got.len(), expected.len());
    let a = metric(port_a, "locus_bridge_fixes_produced_total").await;
    let b = metric(port_b, "locus_bridge_fixes_produced_total").await;
    assert_eq!(a + b, expected.len() as f64);
    assert!(a > 0.0 && b > 0.0, "both replicas took a share: {a} / {b}");
    // Each replica acknowledges every message it received (the PUBACK follows the delivery
    // report, so allow it a moment).
    for port in [port_a, port_b] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let received = metric(port, "locus_bridge_messages_received_total").await;
            let acked = metric(port, "locus_bridge_messages_acked_total").await;
            if acked == received {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "replica on {port}: {acked} of {received} messages acknowledged"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // The PUBACKs reached the broker: killed and started again with the same client ids,
    // the replicas resume their sessions and are sent nothing again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    bridge_a.kill9();
    bridge_b.kill9();
    let (_a, port_a) = s.bridge(&id_a, &[]);
    let (_b, port_b) = s.bridge(&id_b, &direct);
    wait_ready(port_a, Duration::from_secs(30)).await;
    wait_ready(port_b, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for port in [port_a, port_b] {
        let again = metric(port, "locus_bridge_messages_received_total").await;
        assert_eq!(
            again, 0.0,
            "replica on {port} was sent {again} messages again"
        );
    }
}

/// The local Mosquitto (2.0.11) sends a resumed session's whole backlog at once, far beyond
/// the bridge's receive maximum. The bridge stops reading when it holds
/// `max_held_messages` (plus what is already in the local socket buffers), and still
/// delivers every fix.
#[tokio::test(flavor = "multi_thread")]
async fn a_broker_beyond_the_receive_maximum_meets_bounded_memory() {
    let s = Scope::new("bridge-held");
    s.create_topics().await;
    let client_id = unique("b-");
    let env = [
        ("LOCUS_BRIDGE__MAX_IN_FLIGHT", "20".to_string()),
        ("LOCUS_BRIDGE__MAX_HELD_MESSAGES", "100".to_string()),
    ];
    // Create the session, then queue a backlog for it while the bridge is away.
    let (mut bridge, port) = s.bridge(&client_id, &env);
    wait_ready(port, Duration::from_secs(30)).await;
    bridge.term();
    let report = s.sim(&[
        "--devices",
        "40",
        "--connections",
        "4",
        "--fixes-per-device",
        "50",
        "--interval-ms",
        "1",
        "--jitter-ms",
        "0",
    ]);
    let expected = expected_fixes(&report);
    assert_eq!(expected.len(), 2_000);

    let (_bridge, port) = s.bridge(&client_id, &env);
    wait_ready(port, Duration::from_secs(30)).await;
    let mut most_held = 0.0f64;
    let deadline = Instant::now() + Duration::from_secs(90);
    while metric(port, "locus_bridge_fixes_produced_total").await < 2_000.0 {
        assert!(Instant::now() < deadline, "the backlog was not drained");
        most_held = most_held.max(metric(port, "locus_bridge_overflow_messages").await);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pauses = metric(port, "locus_bridge_read_pauses_total").await;
    println!("held at most {most_held} messages; reading paused {pauses} times");
    assert!(
        most_held <= 400.0,
        "held {most_held} of the 2,000 queued messages at once"
    );

    let records = consume_until(
        &s.brokers,
        &s.locations,
        Duration::from_secs(120),
        distinct_fixes_at_least(2_000),
    );
    let got = identities(&decode_all(&s.locations, &records).await);
    println!("{} records for {} fixes", records.len(), got.len());
    assert_none_lost(&s, &records, &expected, &got);
}
