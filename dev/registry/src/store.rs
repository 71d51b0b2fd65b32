//! Subjects, versions and schema ids, kept in memory and made durable in an append-only
//! log (one JSON line per change, fsynced before the change is acknowledged).

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use apache_avro::Schema;
use apache_avro::schema_compatibility::SchemaCompatibility;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// Compatibility levels of the Confluent Schema Registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Level {
    Backward,
    BackwardTransitive,
    Forward,
    ForwardTransitive,
    Full,
    FullTransitive,
    None,
}

impl Level {
    pub fn parse(s: &str) -> Option<Level> {
        serde_json::from_value(serde_json::Value::String(s.to_ascii_uppercase())).ok()
    }

    fn transitive(self) -> bool {
        matches!(
            self,
            Level::BackwardTransitive | Level::ForwardTransitive | Level::FullTransitive
        )
    }

    fn backward(self) -> bool {
        matches!(
            self,
            Level::Backward | Level::BackwardTransitive | Level::Full | Level::FullTransitive
        )
    }

    fn forward(self) -> bool {
        matches!(
            self,
            Level::Forward | Level::ForwardTransitive | Level::Full | Level::FullTransitive
        )
    }
}

/// One line of the durable log.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Change {
    Register {
        subject: String,
        version: u32,
        id: u32,
        schema: String,
    },
    Config {
        subject: Option<String>,
        level: Level,
    },
}

#[derive(Debug, Clone)]
pub struct Version {
    pub version: u32,
    pub id: u32,
}

#[derive(Debug)]
struct Stored {
    text: String,
    canonical: String,
    parsed: Schema,
}

/// A registered version as the API returns it.
#[derive(Debug, Clone, Serialize)]
pub struct SubjectVersion {
    pub subject: String,
    pub version: u32,
    pub id: u32,
    pub schema: String,
}

#[derive(Debug)]
pub struct Store {
    log: File,
    path: PathBuf,
    schemas: BTreeMap<u32, Stored>,
    by_canonical: HashMap<String, u32>,
    subjects: BTreeMap<String, Vec<Version>>,
    global: Level,
    subject_levels: HashMap<String, Level>,
}

fn parse(text: &str) -> Result<Schema, ApiError> {
    Schema::parse_str(text).map_err(|e| ApiError::new(42201, format!("Invalid schema: {e}")))
}

impl Store {
    /// Opens (or creates) the log in `dir` and replays it. A torn last line, left by a
    /// crash in the middle of a write, is dropped: it was never acknowledged.
    pub fn open(dir: &Path) -> std::io::Result<Store> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("schemas.jsonl");
        let mut store = Store {
            log: OpenOptions::new().create(true).append(true).open(&path)?,
            path: path.clone(),
            schemas: BTreeMap::new(),
            by_canonical: HashMap::new(),
            subjects: BTreeMap::new(),
            global: Level::Backward,
            subject_levels: HashMap::new(),
        };
        let reader = BufReader::new(File::open(&path)?);
        let mut good_len = 0u64;
        for line in reader.lines() {
            let line = line?;
            match serde_json::from_str::<Change>(&line) {
                Ok(change) => {
                    store.apply(change);
                    good_len += line.len() as u64 + 1;
                }
                Err(error) => {
                    tracing::warn!(%error, path = %path.display(), "dropping a torn last line of the log");
                    break;
                }
            }
        }
        store.log.set_len(good_len)?;
        tracing::info!(
            schemas = store.schemas.len(),
            subjects = store.subjects.len(),
            path = %store.path.display(),
            "registry state loaded"
        );
        Ok(store)
    }

    fn apply(&mut self, change: Change) {
        match change {
            Change::Register {
                subject,
                version,
                id,
                schema,
            } => {
                if !self.schemas.contains_key(&id) {
                    match Schema::parse_str(&schema) {
                        Ok(parsed) => {
                            let canonical = parsed.canonical_form();
                            self.by_canonical.insert(canonical.clone(), id);
                            self.schemas.insert(
                                id,
                                Stored {
                                    text: schema,
                                    canonical,
                                    parsed,
                                },
                            );
                        }
                        Err(error) => {
                            tracing::error!(%error, id, "a logged schema no longer parses; skipped");
                            return;
                        }
                    }
                }
                self.subjects
                    .entry(subject)
                    .or_default()
                    .push(Version { version, id });
            }
            Change::Config { subject, level } => match subject {
                None => self.global = level,
                Some(s) => {
                    self.subject_levels.insert(s, level);
                }
            },
        }
    }

    fn persist(&mut self, change: &Change) -> Result<(), ApiError> {
        let mut line = serde_json::to_string(change).map_err(ApiError::internal)?;
        line.push('\n');
        self.log
            .write_all(line.as_bytes())
            .and_then(|_| self.log.sync_data())
            .map_err(ApiError::internal)
    }

    pub fn subjects(&self) -> Vec<String> {
        self.subjects.keys().cloned().collect()
    }

    fn versions_of(&self, subject: &str) -> Result<&Vec<Version>, ApiError> {
        self.subjects
            .get(subject)
            .ok_or_else(|| ApiError::subject_not_found(subject))
    }

    pub fn versions(&self, subject: &str) -> Result<Vec<u32>, ApiError> {
        Ok(self
            .versions_of(subject)?
            .iter()
            .map(|v| v.version)
            .collect())
    }

    pub fn schema_by_id(&self, id: u32) -> Result<&str, ApiError> {
        self.schemas
            .get(&id)
            .map(|s| s.text.as_str())
            .ok_or_else(|| ApiError::new(40403, "Schema not found"))
    }

    /// Subjects and versions that use schema `id`.
    pub fn usages(&self, id: u32) -> Vec<(String, u32)> {
        self.subjects
            .iter()
            .flat_map(|(s, vs)| {
                vs.iter()
                    .filter(|v| v.id == id)
                    .map(|v| (s.clone(), v.version))
            })
            .collect()
    }

    /// `v` is a number or `latest` (or -1, which Confluent treats as latest).
    pub fn version(&self, subject: &str, v: &str) -> Result<SubjectVersion, ApiError> {
        let versions = self.versions_of(subject)?;
        let found = match v {
            "latest" | "-1" => versions.last(),
            n => {
                let n: u32 = n.parse().map_err(|_| {
                    ApiError::new(
                        42202,
                        format!(
                            "The specified version '{n}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""
                        ),
                    )
                })?;
                versions.iter().find(|x| x.version == n)
            }
        };
        let found = found.ok_or_else(|| ApiError::new(40402, "Version not found."))?;
        Ok(SubjectVersion {
            subject: subject.to_string(),
            version: found.version,
            id: found.id,
            schema: self.schemas[&found.id].text.clone(),
        })
    }

    pub fn lookup(&self, subject: &str, text: &str) -> Result<SubjectVersion, ApiError> {
        let versions = self.versions_of(subject)?;
        let canonical = parse(text)?.canonical_form();
        versions
            .iter()
            .find(|v| self.schemas[&v.id].canonical == canonical)
            .map(|v| SubjectVersion {
                subject: subject.to_string(),
                version: v.version,
                id: v.id,
                schema: self.schemas[&v.id].text.clone(),
            })
            .ok_or_else(|| ApiError::new(40403, "Schema not found"))
    }

    pub fn level(&self, subject: Option<&str>) -> Option<Level> {
        match subject {
            None => Some(self.global),
            Some(s) => self.subject_levels.get(s).copied(),
        }
    }

    fn effective_level(&self, subject: &str) -> Level {
        self.subject_levels
            .get(subject)
            .copied()
            .unwrap_or(self.global)
    }

    pub fn set_level(&mut self, subject: Option<&str>, level: Level) -> Result<(), ApiError> {
        let change = Change::Config {
            subject: subject.map(str::to_string),
            level,
        };
        self.persist(&change)?;
        self.apply(change);
        Ok(())
    }

    /// Reasons why `candidate` is incompatible with the versions the subject's level
    /// checks it against (empty when compatible). `only` restricts the check to one version.
    pub fn incompatibilities(
        &self,
        subject: &str,
        candidate: &Schema,
        only: Option<u32>,
    ) -> Vec<String> {
        let level = self.effective_level(subject);
        let Some(versions) = self.subjects.get(subject) else {
            return vec![];
        };
        let against: Vec<&Version> = match only {
            Some(n) => versions.iter().filter(|v| v.version == n).collect(),
            None if level == Level::None => vec![],
            None if level.transitive() => versions.iter().collect(),
            None => versions.last().into_iter().collect(),
        };
        let mut reasons = vec![];
        for v in against {
            let existing = &self.schemas[&v.id].parsed;
            if level.backward()
                && let Err(e) = SchemaCompatibility::can_read(existing, candidate)
            {
                reasons.push(format!(
                    "new schema cannot read data written with version {}: {e}",
                    v.version
                ));
            }
            if level.forward()
                && let Err(e) = SchemaCompatibility::can_read(candidate, existing)
            {
                reasons.push(format!(
                    "version {} cannot read data written with the new schema: {e}",
                    v.version
                ));
            }
        }
        reasons
    }

    /// Registers `text` under `subject`: the same schema again returns its existing id;
    /// a schema incompatible under the subject's level is refused (409).
    pub fn register(&mut self, subject: &str, text: &str) -> Result<u32, ApiError> {
        let parsed = parse(text)?;
        let canonical = parsed.canonical_form();
        if let Some(v) = self.subjects.get(subject).and_then(|versions| {
            versions
                .iter()
                .find(|v| self.schemas[&v.id].canonical == canonical)
        }) {
            return Ok(v.id);
        }
        let reasons = self.incompatibilities(subject, &parsed, None);
        if !reasons.is_empty() {
            return Err(ApiError::conflict(format!(
                "Schema being registered is incompatible with an earlier schema for subject \"{subject}\", details: [{}]",
                reasons.join("; ")
            )));
        }
        let id = match self.by_canonical.get(&canonical) {
            Some(id) => *id,
            None => self.schemas.keys().next_back().map_or(1, |max| max + 1),
        };
        let version = self
            .subjects
            .get(subject)
            .and_then(|vs| vs.last())
            .map_or(1, |v| v.version + 1);
        let change = Change::Register {
            subject: subject.to_string(),
            version,
            id,
            schema: text.to_string(),
        };
        self.persist(&change)?;
        self.apply(change);
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = r#"{"type":"record","name":"T","fields":[{"name":"a","type":"long"}]}"#;
    const V2: &str = r#"{"type":"record","name":"T","fields":[{"name":"a","type":"long"},{"name":"b","type":["null","string"],"default":null}]}"#;
    const BAD: &str = r#"{"type":"record","name":"T","fields":[{"name":"c","type":"string"}]}"#;

    #[test]
    fn same_schema_same_id_and_versions_grow() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        let a = s.register("t-value", V1).unwrap();
        assert_eq!(s.register("t-value", V1).unwrap(), a);
        let b = s.register("t-value", V2).unwrap();
        assert_ne!(a, b);
        assert_eq!(s.versions("t-value").unwrap(), vec![1, 2]);
        // the same schema under another subject shares the id
        assert_eq!(s.register("u-value", V1).unwrap(), a);
    }

    #[test]
    fn incompatible_is_refused_unless_none() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        s.register("t", V1).unwrap();
        let err = s.register("t", BAD).unwrap_err();
        assert_eq!(err.code, 409);
        s.set_level(Some("t"), Level::None).unwrap();
        s.register("t", BAD).unwrap();
    }

    #[test]
    fn survives_reopen_and_drops_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Store::open(dir.path()).unwrap();
            s.register("t", V1).unwrap();
            s.set_level(None, Level::Full).unwrap();
        }
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join("schemas.jsonl"))
            .unwrap();
        f.write_all(b"{\"op\":\"register\",\"subj").unwrap();
        drop(f);
        let mut s = Store::open(dir.path()).unwrap();
        assert_eq!(s.versions("t").unwrap(), vec![1]);
        assert_eq!(s.level(None), Some(Level::Full));
        // the log is writable again after the torn line was cut
        s.register("t", V2).unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.versions("t").unwrap(), vec![1, 2]);
    }
}
