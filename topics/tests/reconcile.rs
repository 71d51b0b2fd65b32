//! plan/apply against the local stack's Kafka (LOCUS_KAFKA_BROKERS), on topics of its own.

use locus_kafka::KafkaConfig;
use locus_topics::{Change, TopicsError, TopicsFile, apply, plan};

fn kafka() -> KafkaConfig {
    KafkaConfig {
        brokers: std::env::var("LOCUS_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into()),
        ..Default::default()
    }
}

fn file(prefix: &str, partitions: u32, retention_ms: i64) -> TopicsFile {
    let yaml = format!(
        "topics:\n\
         - name: {prefix}.a\n  partitions: {partitions}\n  replication_factor: 3\n  min_insync_replicas: 2\n  retention_ms: {retention_ms}\n  cleanup_policy: delete\n  compression: producer\n\
         - name: {prefix}.b\n  partitions: 1\n  replication_factor: 1\n  min_insync_replicas: 1\n  retention_ms: 3600000\n  cleanup_policy: delete\n  compression: lz4\n"
    );
    TopicsFile::parse(&yaml, "test.yaml").unwrap()
}

#[tokio::test]
async fn create_grow_alter_and_refuse_shrink() {
    let k = kafka();
    let prefix = format!("t{}", uuid::Uuid::new_v4().simple());

    let p = plan(&k, &file(&prefix, 3, 86_400_000), Some(1))
        .await
        .unwrap();
    assert_eq!(p.changes.len(), 2, "{p}");
    assert!(matches!(
        &p.changes[0],
        Change::Create {
            partitions: 3,
            replication_factor: 1,
            ..
        }
    ));
    apply(&k, &p).await.unwrap();

    // Applying twice changes nothing the second time.
    let again = plan(&k, &file(&prefix, 3, 86_400_000), Some(1))
        .await
        .unwrap();
    assert!(again.is_empty(), "second plan should be empty:\n{again}");
    assert_eq!(
        locus_kafka::partition_count(&k, &format!("{prefix}.a"))
            .await
            .unwrap(),
        3
    );

    // More partitions: added.
    let grow = plan(&k, &file(&prefix, 5, 86_400_000), Some(1))
        .await
        .unwrap();
    assert_eq!(
        grow.changes,
        vec![Change::AddPartitions {
            name: format!("{prefix}.a"),
            from: 3,
            to: 5
        }]
    );
    let partitions = match apply(&k, &grow).await {
        Ok(_) => 5,
        // tansu 0.6 (the local stack) has no CreatePartitions: the error must say so, and
        // nothing must have changed. Against Apache Kafka the partitions are added.
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("does not implement CreatePartitions"), "{msg}");
            3
        }
    };
    assert_eq!(
        locus_kafka::partition_count(&k, &format!("{prefix}.a"))
            .await
            .unwrap(),
        partitions
    );

    // A config change: altered, then stable.
    let alter = plan(&k, &file(&prefix, partitions as u32, 172_800_000), Some(1))
        .await
        .unwrap();
    assert!(
        matches!(&alter.changes[..], [Change::AlterConfigs { diff, .. }] if diff.len() == 1 && diff[0].0 == "retention.ms"),
        "{alter}"
    );
    apply(&k, &alter).await.unwrap();
    assert!(
        plan(&k, &file(&prefix, partitions as u32, 172_800_000), Some(1))
            .await
            .unwrap()
            .is_empty()
    );

    // Fewer partitions: refused, and apply changes nothing.
    let shrink = plan(&k, &file(&prefix, 2, 172_800_000), Some(1))
        .await
        .unwrap();
    assert_eq!(shrink.refusals.len(), 1, "{shrink}");
    assert!(
        shrink
            .to_string()
            .contains(&format!("cannot shrink from {partitions} to 2"))
    );
    let err = apply(&k, &shrink).await.unwrap_err();
    assert!(matches!(err, TopicsError::Refused(_)), "{err}");
    assert_eq!(
        locus_kafka::partition_count(&k, &format!("{prefix}.a"))
            .await
            .unwrap(),
        partitions
    );
}

#[tokio::test]
async fn unreachable_kafka_is_a_clear_error() {
    let k = KafkaConfig {
        brokers: "127.0.0.1:1".into(),
        request_timeout_ms: 1_500,
        ..Default::default()
    };
    let err = plan(&k, &file("never", 1, 1000), Some(1))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("127.0.0.1:1"), "{err}");
}

#[tokio::test]
async fn a_partition_cap_creates_the_capped_count_and_then_agrees() {
    let k = kafka();
    let prefix = format!("t{}", uuid::Uuid::new_v4().simple());
    let capped = || file(&prefix, 6, 86_400_000).with_max_partitions(Some(2));

    apply(&k, &plan(&k, &capped(), Some(1)).await.unwrap())
        .await
        .unwrap();
    assert_eq!(
        locus_kafka::partition_count(&k, &format!("{prefix}.a"))
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        locus_kafka::partition_count(&k, &format!("{prefix}.b"))
            .await
            .unwrap(),
        1
    );
    // The capped declaration is what the cluster has: nothing to do, nothing refused.
    let again = plan(&k, &capped(), Some(1)).await.unwrap();
    assert!(
        again.is_empty() && again.refusals.is_empty(),
        "capped plan should be empty:\n{again}"
    );
}
