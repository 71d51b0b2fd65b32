//! `locus replay group`: move a stopped consumer group's committed offsets (to a time, the
//! earliest or latest retained record, or by a shift), as `kafka-consumer-groups
//! --reset-offsets` does, with the plan printed first. A group with active members is
//! refused, naming them: moving a live group's offsets would be undone by its next commit.

use std::time::Duration;

use locus_kafka::KafkaConfig;
use locus_kafka::rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use locus_kafka::rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::ReplayError;
use crate::time::format_time;

/// Where the group's offsets go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The first record at or after this time (ms); the end if none.
    Time(i64),
    Earliest,
    Latest,
    /// From the committed offset (or the earliest if none), within the retained log.
    ShiftBy(i64),
}

/// One partition's move.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Move {
    pub partition: i32,
    /// Committed now (`None`: nothing committed).
    pub current: Option<i64>,
    pub new: i64,
    pub low: i64,
    pub high: i64,
}

impl Move {
    /// Records the group reads again (positive) or skips (negative) after the move.
    pub fn delta(&self) -> i64 {
        self.current.unwrap_or(self.low) - self.new
    }
}

/// The plan for every partition of the topic.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub group: String,
    pub topic: String,
    pub moves: Vec<Move>,
}

impl Plan {
    /// Records read again, summed over partitions moved back.
    pub fn to_reread(&self) -> i64 {
        self.moves.iter().map(|m| m.delta().max(0)).sum()
    }

    /// Records skipped, summed over partitions moved forward.
    pub fn to_skip(&self) -> i64 {
        self.moves.iter().map(|m| (-m.delta()).max(0)).sum()
    }

    pub fn table(&self) -> String {
        let mut s = format!(
            "group {} on {}\n{:>9}  {:>12}  {:>12}  {:>12}\n",
            self.group, self.topic, "partition", "current", "new", "re-read"
        );
        for m in &self.moves {
            let cur = m.current.map_or("-".to_string(), |c| c.to_string());
            s.push_str(&format!(
                "{:>9}  {:>12}  {:>12}  {:>12}\n",
                m.partition,
                cur,
                m.new,
                m.delta()
            ));
        }
        s.push_str(&format!(
            "total: {} records to read again, {} skipped\n",
            self.to_reread(),
            self.to_skip()
        ));
        s
    }
}

fn consumer(kafka: &KafkaConfig, group: &str) -> Result<BaseConsumer, ReplayError> {
    let mut c = kafka.consumer_config("replay-group", group);
    c.set("enable.auto.commit", "false");
    Ok(c.create()?)
}

/// The group's active members (`client_id@host`); empty when the group is stopped.
fn members(c: &BaseConsumer, group: &str, timeout: Duration) -> Result<Vec<String>, ReplayError> {
    let list = c.fetch_group_list(Some(group), timeout)?;
    Ok(list
        .groups()
        .iter()
        .filter(|g| g.name() == group)
        .flat_map(|g| g.members())
        .map(|m| match (m.client_id(), m.client_host()) {
            ("", _) => m.id().to_string(),
            (client, "") => client.to_string(),
            (client, host) => format!("{client}@{host}"),
        })
        .collect())
}

/// Refuses unless the group exists and is stopped: no members, and the coordinator says
/// `Empty` (a group that is rebalancing has no members listed yet, but is not stopped).
fn refuse_unless_stopped(
    c: &BaseConsumer,
    group: &str,
    topic: &str,
    timeout: Duration,
) -> Result<(), ReplayError> {
    let list = c.fetch_group_list(Some(group), timeout)?;
    let Some(g) = list
        .groups()
        .iter()
        .find(|g| g.name() == group && g.state() != "Dead")
    else {
        return Err(ReplayError::Invalid(format!(
            "group '{group}' is not known to the cluster: check the name (a group exists once \
             it has consumed {topic})"
        )));
    };
    let m = members(c, group, timeout)?;
    if !m.is_empty() {
        return Err(ReplayError::Invalid(format!(
            "group {group} has {} active member(s): {}; stop them (scale the stage to 0) first",
            m.len(),
            m.join(", ")
        )));
    }
    if g.state() != "Empty" {
        return Err(ReplayError::Invalid(format!(
            "group {group} is {}, not Empty: wait until its members have left",
            g.state()
        )));
    }
    Ok(())
}

/// Plans the move; refuses while the group has active members.
pub async fn plan(
    kafka: &KafkaConfig,
    group: &str,
    topic: &str,
    target: Target,
) -> Result<Plan, ReplayError> {
    let (kafka, group, topic) = (kafka.clone(), group.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || plan_blocking(&kafka, &group, &topic, target))
        .await
        .map_err(|e| ReplayError::Invalid(e.to_string()))?
}

fn plan_blocking(
    kafka: &KafkaConfig,
    group: &str,
    topic: &str,
    target: Target,
) -> Result<Plan, ReplayError> {
    let timeout = Duration::from_millis(kafka.request_timeout_ms);
    let c = consumer(kafka, group)?;
    let md = c.fetch_metadata(Some(topic), timeout)?;
    let partitions = locus_kafka::partitions_of(&md, topic);
    if partitions.is_empty() {
        return Err(ReplayError::Invalid(format!(
            "topic '{topic}' does not exist"
        )));
    }
    refuse_unless_stopped(&c, group, topic, timeout)?;
    let mut all = TopicPartitionList::new();
    for p in &partitions {
        all.add_partition(topic, *p);
    }
    let committed = c.committed_offsets(all, timeout)?;
    let times = match target {
        Target::Time(t) => {
            let mut tpl = TopicPartitionList::new();
            for p in &partitions {
                tpl.add_partition_offset(topic, *p, Offset::Offset(t.max(0)))?;
            }
            let found = c.offsets_for_times(tpl, timeout)?;
            for e in found.elements() {
                if let Err(err) = e.error() {
                    return Err(ReplayError::Invalid(format!(
                        "partition {} could not say where {} is ({err}); nothing was changed, \
                         try again",
                        e.partition(),
                        format_time(t)
                    )));
                }
            }
            Some(found)
        }
        _ => None,
    };
    let mut moves = Vec::with_capacity(partitions.len());
    for p in partitions {
        let (low, high) = c.fetch_watermarks(topic, p, timeout)?;
        let current = committed
            .find_partition(topic, p)
            .and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            });
        let new = match target {
            Target::Earliest => low,
            Target::Latest => high,
            Target::ShiftBy(n) => match current {
                Some(c) => c.saturating_add(n).clamp(low, high),
                None => {
                    return Err(ReplayError::Invalid(format!(
                        "partition {p} has no committed offset to shift from: use \
                         --to-datetime, --to-earliest or --to-latest"
                    )));
                }
            },
            Target::Time(_) => times
                .as_ref()
                .and_then(|t| t.find_partition(topic, p))
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o.clamp(low, high)),
                    _ => None,
                })
                .unwrap_or(high),
        };
        moves.push(Move {
            partition: p,
            current,
            new,
            low,
            high,
        });
    }
    Ok(Plan {
        group: group.to_string(),
        topic: topic.to_string(),
        moves,
    })
}

/// Commits the plan's offsets; checks again that the group is stopped.
pub async fn execute(kafka: &KafkaConfig, plan: &Plan) -> Result<(), ReplayError> {
    let (kafka, plan) = (kafka.clone(), plan.clone());
    tokio::task::spawn_blocking(move || {
        let timeout = Duration::from_millis(kafka.request_timeout_ms);
        let c = consumer(&kafka, &plan.group)?;
        refuse_unless_stopped(&c, &plan.group, &plan.topic, timeout)?;
        let mut tpl = TopicPartitionList::new();
        for m in &plan.moves {
            tpl.add_partition_offset(&plan.topic, m.partition, Offset::Offset(m.new))?;
        }
        c.commit(&tpl, CommitMode::Sync)?;
        // librdkafka reports an error only when every partition failed: read back what is
        // committed and compare with the plan.
        let mut all = TopicPartitionList::new();
        for m in &plan.moves {
            all.add_partition(&plan.topic, m.partition);
        }
        let now = c.committed_offsets(all, timeout)?;
        let wrong: Vec<String> = plan
            .moves
            .iter()
            .filter(|m| {
                now.find_partition(&plan.topic, m.partition)
                    .map(|e| e.offset())
                    != Some(Offset::Offset(m.new))
            })
            .map(|m| m.partition.to_string())
            .collect();
        if !wrong.is_empty() {
            return Err(ReplayError::Invalid(format!(
                "the commit did not take on partition(s) {}: check the group (it may have \
                 restarted) and run the plan again",
                wrong.join(", ")
            )));
        }
        Ok(())
    })
    .await
    .map_err(|e| ReplayError::Invalid(e.to_string()))?
}

/// `--to-datetime` in the plan's words.
pub fn describe(target: Target) -> String {
    match target {
        Target::Time(t) => format!("to {}", format_time(t)),
        Target::Earliest => "to the earliest retained record".into(),
        Target::Latest => "to the end of the log".into(),
        Target::ShiftBy(n) => format!("by {n:+} records"),
    }
}
