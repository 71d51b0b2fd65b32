use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use locus_kafka::KafkaConfig;
use locus_kafka::rdkafka::admin::{
    AdminClient, AdminOptions, NewPartitions, NewTopic, ResourceSpecifier, TopicReplication,
};
use locus_kafka::rdkafka::client::DefaultClientContext;
use locus_kafka::rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::{TopicSpec, TopicsError, TopicsFile};

/// One difference between `topics.yaml` and the cluster.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Create {
        name: String,
        partitions: u32,
        replication_factor: u16,
        configs: BTreeMap<String, String>,
    },
    AddPartitions {
        name: String,
        from: u32,
        to: u32,
    },
    /// Sets the declared configs that differ (IncrementalAlterConfigs: other configs of the
    /// topic are left alone); `diff` lists them as (key, live value, declared value).
    AlterConfigs {
        name: String,
        configs: BTreeMap<String, String>,
        diff: Vec<(String, Option<String>, String)>,
    },
}

/// What `apply` would do, what it refuses, and what it only reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub changes: Vec<Change>,
    pub refusals: Vec<String>,
    pub notes: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.refusals.is_empty()
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            writeln!(f, "No changes: the cluster matches topics.yaml.")?;
        }
        for c in &self.changes {
            match c {
                Change::Create {
                    name,
                    partitions,
                    replication_factor,
                    configs,
                } => {
                    writeln!(
                        f,
                        "+ create {name}: {partitions} partitions, replication factor {replication_factor}"
                    )?;
                    for (k, v) in configs {
                        writeln!(f, "    {k} = {v}")?;
                    }
                }
                Change::AddPartitions { name, from, to } => {
                    writeln!(f, "~ {name}: partitions {from} -> {to}")?;
                }
                Change::AlterConfigs { name, diff, .. } => {
                    writeln!(f, "~ {name}: configs")?;
                    for (k, from, to) in diff {
                        writeln!(
                            f,
                            "    {k}: {} -> {to}",
                            from.as_deref().unwrap_or("(unset)")
                        )?;
                    }
                }
            }
        }
        for r in &self.refusals {
            writeln!(f, "! refused: {r}")?;
        }
        for n in &self.notes {
            writeln!(f, "  note: {n}")?;
        }
        Ok(())
    }
}

struct Live {
    partitions: u32,
    replication_factor: u16,
    configs: HashMap<String, Option<String>>,
}

type Admin = Arc<AdminClient<DefaultClientContext>>;

fn admin(kafka: &KafkaConfig) -> Result<Admin, TopicsError> {
    kafka
        .client_config("topics")
        .create()
        .map(Arc::new)
        .map_err(|e| TopicsError::Kafka(locus_kafka::KafkaError::Client(e)))
}

fn options(kafka: &KafkaConfig) -> AdminOptions {
    let t = Duration::from_millis(kafka.request_timeout_ms);
    AdminOptions::new()
        .request_timeout(Some(t))
        .operation_timeout(Some(t))
}

async fn live_state(
    kafka: &KafkaConfig,
    admin: &Admin,
    names: &[&str],
) -> Result<HashMap<String, Live>, TopicsError> {
    // The metadata call blocks its thread: on a blocking one. An unreachable cluster fails
    // here, as `KafkaError::Unreachable` naming the brokers.
    let (client, timeout) = (
        admin.clone(),
        Duration::from_millis(kafka.request_timeout_ms),
    );
    let md = tokio::task::spawn_blocking(move || client.inner().fetch_metadata(None, timeout))
        .await
        .map_err(|e| locus_kafka::KafkaError::Join(e.to_string()))?
        .map_err(|source| locus_kafka::KafkaError::Unreachable {
            brokers: kafka.brokers.clone(),
            source,
        })?;
    let mut live = HashMap::new();
    for t in md.topics() {
        if !names.contains(&t.name()) || t.error().is_some() || t.partitions().is_empty() {
            continue;
        }
        let rf = t
            .partitions()
            .iter()
            .map(|p| p.replicas().len())
            .max()
            .unwrap_or(0);
        live.insert(
            t.name().to_string(),
            Live {
                partitions: t.partitions().len() as u32,
                replication_factor: rf as u16,
                configs: HashMap::new(),
            },
        );
    }
    let existing: Vec<String> = live.keys().cloned().collect();
    let specs: Vec<ResourceSpecifier<'_>> = existing
        .iter()
        .map(|n| ResourceSpecifier::Topic(n))
        .collect();
    if !specs.is_empty() {
        let results = admin
            .describe_configs(specs.iter(), &options(kafka))
            .await
            .map_err(|e| TopicsError::Admin {
                operation: "DescribeConfigs".into(),
                message: e.to_string(),
            })?;
        for (name, result) in existing.iter().zip(results) {
            let resource = result.map_err(|code| TopicsError::Admin {
                operation: format!("DescribeConfigs of {name}"),
                message: code.to_string(),
            })?;
            if let Some(l) = live.get_mut(name) {
                l.configs = resource
                    .entries
                    .into_iter()
                    .map(|e| (e.name, e.value))
                    .collect();
            }
        }
    }
    Ok(live)
}

fn diff_topic(spec: &TopicSpec, live: Option<&Live>, max_rf: Option<u16>, plan: &mut Plan) {
    let configs = spec.configs(max_rf);
    let rf = spec.effective_replication_factor(max_rf);
    let Some(live) = live else {
        plan.changes.push(Change::Create {
            name: spec.name.clone(),
            partitions: spec.partitions,
            replication_factor: rf,
            configs,
        });
        return;
    };
    if spec.partitions > live.partitions {
        plan.changes.push(Change::AddPartitions {
            name: spec.name.clone(),
            from: live.partitions,
            to: spec.partitions,
        });
    } else if spec.partitions < live.partitions {
        plan.refusals.push(format!(
            "{}: cannot shrink from {} to {} partitions (Kafka cannot remove partitions; \
             declare {} or more, or recreate the topic by hand)",
            spec.name, live.partitions, spec.partitions, live.partitions
        ));
    }
    if rf != live.replication_factor && live.replication_factor != 0 {
        plan.notes.push(format!(
            "{}: replication factor is {} on the cluster, {} declared; changing it needs a \
             partition reassignment, which apply does not do",
            spec.name, live.replication_factor, rf
        ));
    }
    let diff: Vec<(String, Option<String>, String)> = configs
        .iter()
        .filter_map(|(k, v)| {
            let current = live.configs.get(k).cloned().flatten();
            (current.as_deref() != Some(v.as_str())).then(|| (k.clone(), current, v.clone()))
        })
        .collect();
    if !diff.is_empty() {
        plan.changes.push(Change::AlterConfigs {
            name: spec.name.clone(),
            configs,
            diff,
        });
    }
}

/// Compares `file` with the cluster. `max_replication_factor` caps replication factor and
/// min.insync.replicas for small clusters (the local stack's single broker).
pub async fn plan(
    kafka: &KafkaConfig,
    file: &TopicsFile,
    max_replication_factor: Option<u16>,
) -> Result<Plan, TopicsError> {
    let admin = admin(kafka)?;
    let names: Vec<&str> = file.topics.iter().map(|t| t.name.as_str()).collect();
    let live = live_state(kafka, &admin, &names).await?;
    let mut plan = Plan::default();
    for spec in &file.topics {
        diff_topic(
            spec,
            live.get(&spec.name),
            max_replication_factor,
            &mut plan,
        );
    }
    Ok(plan)
}

fn admin_error(operation: String) -> impl Fn(String) -> TopicsError {
    move |message| TopicsError::Admin {
        operation: operation.clone(),
        message,
    }
}

fn partitions_error(code: RDKafkaErrorCode) -> String {
    if code == RDKafkaErrorCode::UnsupportedFeature {
        "the broker does not implement CreatePartitions (the local stack's tansu 0.6 does not; \
         Apache Kafka, Redpanda, MSK and Confluent Cloud do)"
            .to_string()
    } else {
        code.to_string()
    }
}

/// Carries out `plan`. Refuses the whole plan, changing nothing, if it contains a refusal.
/// Returns one line per change made.
pub async fn apply(kafka: &KafkaConfig, plan: &Plan) -> Result<Vec<String>, TopicsError> {
    if !plan.refusals.is_empty() {
        return Err(TopicsError::Refused(plan.refusals.clone()));
    }
    let admin = admin(kafka)?;
    let opts = options(kafka);
    let mut done = vec![];
    for change in &plan.changes {
        match change {
            Change::Create {
                name,
                partitions,
                replication_factor,
                configs,
            } => {
                let mut t = NewTopic::new(
                    name,
                    *partitions as i32,
                    TopicReplication::Fixed(i32::from(*replication_factor)),
                );
                for (k, v) in configs {
                    t = t.set(k, v);
                }
                let err = admin_error(format!("CreateTopics of {name}"));
                let results = admin
                    .create_topics([&t], &opts)
                    .await
                    .map_err(|e| err(e.to_string()))?;
                for r in results {
                    match r {
                        Ok(_) => {}
                        Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                        Err((_, code)) => return Err(err(code.to_string())),
                    }
                }
                done.push(format!("created {name} ({partitions} partitions)"));
            }
            Change::AddPartitions { name, from, to } => {
                let err = admin_error(format!("CreatePartitions of {name}"));
                let p = NewPartitions::new(name, *to as usize);
                let results = admin
                    .create_partitions([&p], &opts)
                    .await
                    .map_err(|e| match e {
                        KafkaError::AdminOp(code) => err(partitions_error(code)),
                        e => err(e.to_string()),
                    })?;
                for r in results {
                    r.map_err(|(_, code)| err(partitions_error(code)))?;
                }
                done.push(format!("{name}: partitions {from} -> {to}"));
            }
            Change::AlterConfigs { name, diff, .. } => {
                let err = admin_error(format!("IncrementalAlterConfigs of {name}"));
                let set: Vec<(String, String)> = diff
                    .iter()
                    .map(|(k, _, v)| (k.clone(), v.clone()))
                    .collect();
                crate::incremental::set_topic_configs(
                    &admin,
                    name,
                    &set,
                    Duration::from_millis(kafka.request_timeout_ms),
                )
                .map_err(&err)?;
                let keys: Vec<&str> = diff.iter().map(|(k, _, _)| k.as_str()).collect();
                done.push(format!("{name}: set {}", keys.join(", ")));
            }
        }
    }
    Ok(done)
}

/// One config value of a live topic (`retention.ms`, …); `None` if the broker does not
/// report it. Errors name a missing topic.
pub async fn live_config(
    kafka: &KafkaConfig,
    topic: &str,
    key: &str,
) -> Result<Option<String>, TopicsError> {
    let admin = admin(kafka)?;
    let live = live_state(kafka, &admin, &[topic]).await?;
    let Some(t) = live.get(topic) else {
        return Err(TopicsError::Admin {
            operation: format!("DescribeConfigs of {topic}"),
            message: format!("topic '{topic}' does not exist"),
        });
    };
    Ok(t.configs.get(key).cloned().flatten())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TopicSpec {
        TopicsFile::parse(crate::DEFAULT_TOPICS_YAML, "t")
            .unwrap()
            .get("locations")
            .unwrap()
            .clone()
    }

    fn live(partitions: u32, configs: &[(&str, &str)]) -> Live {
        Live {
            partitions,
            replication_factor: 1,
            configs: configs
                .iter()
                .map(|(k, v)| (k.to_string(), Some(v.to_string())))
                .collect(),
        }
    }

    #[test]
    fn shrinking_is_refused_and_growing_planned() {
        let s = spec();
        let matching: Vec<(String, String)> = s.configs(Some(1)).into_iter().collect();
        let m: Vec<(&str, &str)> = matching
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut p = Plan::default();
        diff_topic(&s, Some(&live(s.partitions + 1, &m)), Some(1), &mut p);
        assert_eq!(p.refusals.len(), 1);
        assert!(p.refusals[0].contains("cannot shrink"));
        let mut p = Plan::default();
        diff_topic(&s, Some(&live(2, &m)), Some(1), &mut p);
        assert_eq!(
            p.changes,
            vec![Change::AddPartitions {
                name: "locations".into(),
                from: 2,
                to: s.partitions
            }]
        );
        let mut p = Plan::default();
        diff_topic(&s, Some(&live(s.partitions, &m)), Some(1), &mut p);
        assert!(p.is_empty(), "{p}");
    }
}
