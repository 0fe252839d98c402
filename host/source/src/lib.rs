//! Where weft's raw events come from: Kafka, a JSON-lines file, standard input or a
//! built-in demo generator, all behind one [`Source`] trait.
//!
//! A source hands the pipeline raw messages (one JSON event each, never parsed here)
//! tagged with a partition and an offset. The pipeline checkpoints the next offset of
//! every partition; after a restart it calls [`Source::resume`] with them and the
//! source delivers exactly the messages from there on.

mod demo;
mod file;
mod group;
mod kafka;
mod stdin;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use group::{Group, Logged, Record};

/// One raw message: the bytes of one JSON event and where it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub payload: Vec<u8>,
    pub partition: i32,
    pub offset: i64,
    /// A Kafka message's key (a topic keyed by user carries the user id).
    pub key: Option<Vec<u8>>,
}

/// Next offset to read, per partition.
pub type Offsets = BTreeMap<i32, i64>;

/// A stream of raw messages, polled synchronously by the single pipeline thread.
pub trait Source: Send {
    /// Start after everything before `offsets` (from the last checkpoint); called once before the first poll.
    /// `last` is the [`Identity`] the checkpoint recorded: resuming by position is only right on the
    /// same input, so a source that is not the one recorded refuses ([`SourceError::Changed`]).
    fn resume(&mut self, offsets: &Offsets, last: Option<&Identity>) -> Result<(), SourceError>;

    /// What this input is, for the next checkpoint to record (see [`Source::resume`]).
    fn identity(&self) -> Identity;

    /// Append up to `max` messages to `out`, waiting at most `timeout` if none is ready.
    /// Returns false once the source has ended for good (file/stdin at EOF); a Kafka or demo source never ends.
    ///
    /// A call that returns false appends nothing, so messages are never handed over
    /// together with the end. An error is likewise only returned by a call that
    /// appended nothing: one met mid-batch is kept for the next call.
    fn poll(
        &mut self,
        out: &mut Vec<Message>,
        max: usize,
        timeout: Duration,
    ) -> Result<bool, SourceError>;

    /// Partitions currently read to their end (nothing more is available right now). A partition leaves this set when a message from it is returned again. The pipeline lets caught-up partitions stop holding back its event-time watermark.
    fn caught_up(&self) -> &BTreeSet<i32>;

    /// Partitions this source currently reads (a Kafka source: its assignment; the
    /// others read one, partition 0). One that has delivered nothing yet holds back
    /// the pipeline's watermark.
    fn partitions(&self) -> BTreeSet<i32> {
        BTreeSet::from([0])
    }

    /// Everything before `offsets` is durably processed (a Kafka source commits them
    /// to its consumer group, async). By default there is nowhere to record it: the
    /// pipeline's checkpoint is the only record of progress.
    fn commit(&mut self, _offsets: &Offsets) -> Result<(), SourceError> {
        Ok(())
    }

    /// Hands a Kafka source the owner of its partitions' state, asked
    /// whenever the group moves partitions (other sources have none).
    fn set_rebalance(&mut self, _owner: Box<dyn Rebalance>) {}

    /// A JSON description for the status API: {"kind": "kafka"|"file"|"stdin"|"demo", ... e.g. "topic","group","brokers","path","lag" (messages behind the end, when known)}.
    fn describe(&self) -> serde_json::Value;
}

/// What a Kafka source asks of the owner of its partitions' state when the
/// group moves partitions. Called inside [`Source::poll`] (librdkafka's
/// rebalance callback), before the assignment changes, so a partition is
/// never read before its state is current nor given up before its last
/// checkpoint. An error stops the source: its next poll returns it.
pub trait Rebalance: Send {
    /// `partitions` are now this host's: make their state current and say
    /// where each resumes (one not in the answer starts at its beginning).
    fn assigned(&mut self, partitions: &[i32]) -> Result<Offsets, String>;
    /// `partitions` are being taken away: finish with them.
    fn revoked(&mut self, partitions: &[i32]) -> Result<(), String>;
}

/// What a source reads, recorded in checkpoints: a data directory resumes by position only on
/// the input it was used with.
///
/// A file or stdin is known by its first bytes (up to 4 KiB of what was read, hashed), a file
/// also by its path; a Kafka source by its topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Identity {
    Kafka {
        topic: String,
    },
    File {
        path: String,
        prefix_len: u64,
        prefix_sha256: String,
    },
    Stdin {
        prefix_len: u64,
        prefix_sha256: String,
    },
    Demo,
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::Kafka { topic } => write!(f, "Kafka topic {topic:?}"),
            Identity::File {
                path,
                prefix_len,
                prefix_sha256,
            } => write!(
                f,
                "the file {path} (whose first {prefix_len} bytes have SHA-256 {})",
                &prefix_sha256[..prefix_sha256.len().min(12)]
            ),
            Identity::Stdin {
                prefix_len,
                prefix_sha256,
            } => write!(
                f,
                "stdin input whose first {prefix_len} bytes have SHA-256 {}",
                &prefix_sha256[..prefix_sha256.len().min(12)]
            ),
            Identity::Demo => f.write_str("the demo generator"),
        }
    }
}

impl Identity {
    /// How many of the input's first bytes identify it (a file, stdin).
    pub fn prefix_len(&self) -> Option<u64> {
        match self {
            Identity::File { prefix_len, .. } | Identity::Stdin { prefix_len, .. } => {
                Some(*prefix_len)
            }
            Identity::Kafka { .. } | Identity::Demo => None,
        }
    }

    /// Whether `other` names the same place (kind, and a file's path),
    /// however much of its beginning either recorded.
    pub fn same_place(&self, other: &Identity) -> bool {
        match (self, other) {
            (Identity::File { path: a, .. }, Identity::File { path: b, .. }) => a == b,
            (a, b) => std::mem::discriminant(a) == std::mem::discriminant(b),
        }
    }

    /// The error for resuming on `now` a position recorded on `self`.
    pub fn changed(&self, now: impl std::fmt::Display) -> SourceError {
        SourceError::Changed {
            was: self.to_string(),
            now: now.to_string(),
        }
    }
}

/// Which source to read, as chosen on the command line or in the config file.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub enum SourceSpec {
    Kafka(KafkaConfig),
    File(PathBuf),
    Stdin,
    Demo(DemoConfig),
}

impl FromStr for SourceSpec {
    type Err = SourceError;

    /// Parses `kafka`, `file:PATH`, `stdin` or `demo` (Kafka and demo with default settings).
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        match spec {
            "kafka" => Ok(SourceSpec::Kafka(KafkaConfig::default())),
            "stdin" => Ok(SourceSpec::Stdin),
            "demo" => Ok(SourceSpec::Demo(DemoConfig::default())),
            _ => match spec.strip_prefix("file:") {
                Some(path) if !path.is_empty() => Ok(SourceSpec::File(PathBuf::from(path))),
                _ => Err(SourceError::Spec {
                    spec: spec.to_owned(),
                }),
            },
        }
    }
}

/// Settings of the Kafka source.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct KafkaConfig {
    /// Bootstrap brokers, comma separated.
    pub brokers: String,
    pub topic: String,
    /// Consumer group the processed offsets are committed to.
    pub group: String,
    /// Extra librdkafka settings (e.g. security). They cannot turn on auto-commit,
    /// offset auto-store or turn off partition EOF events, which exactness relies on.
    pub options: BTreeMap<String, String>,
    /// This host's static member id in the group (`group.instance.id`), kept in its data
    /// directory so a restart rejoins as the same member; `options` may override it.
    #[serde(skip)]
    pub instance_id: Option<String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".to_owned(),
            topic: "events".to_owned(),
            group: "weft".to_owned(),
            options: BTreeMap::new(),
            instance_id: None,
        }
    }
}

/// Settings of the built-in demo generator.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct DemoConfig {
    /// Events per second (at least 1).
    pub rate: u32,
    /// Users browsing at any one time (at least 1). Visitors leave, come back after
    /// more than 30 minutes or are replaced by new ones, so the number of distinct
    /// user ids grows over time. Capped at 60 × `rate` so that events within a
    /// session stay at most a few minutes apart.
    pub users: u32,
    /// Seed of the generator: the same seed gives the same events, apart from timestamps.
    pub seed: u64,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            rate: 200,
            users: 500,
            seed: 42,
        }
    }
}

/// Why a source could not be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("invalid source {spec:?}: expected \"kafka\", \"file:PATH\", \"stdin\" or \"demo\"")]
    Spec { spec: String },
    #[error("cannot open file source {}", path.display())]
    FileOpen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read file source {} after line {line}", path.display())]
    FileRead {
        path: PathBuf,
        line: i64,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read stdin source after line {line}")]
    StdinRead {
        line: i64,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the stdin source reader thread")]
    StdinThread(#[source] std::io::Error),
    #[error(
        "the data directory was last used with {was}, but this input is {now}: resuming by position would skip or repeat events. Use a new --data-dir, or pass --reset-source to read this input from its beginning (plugin state and counters are kept)"
    )]
    Changed { was: String, now: String },
    #[error("invalid demo source settings: {reason}")]
    DemoConfig { reason: &'static str },
    #[error("invalid Kafka source settings for topic {topic:?}: {reason}")]
    KafkaConfig { topic: String, reason: &'static str },
    #[error("cannot create Kafka consumer for brokers {brokers}")]
    KafkaCreate {
        brokers: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("cannot subscribe to Kafka topic {topic}")]
    KafkaSubscribe {
        topic: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("Kafka consumer of topic {topic} failed for good")]
    KafkaFatal {
        topic: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("consumer group {group}: {reason}")]
    Group { group: String, reason: String },
    #[error("{0}")]
    Rebalance(String),
    #[error("cannot commit offsets of Kafka topic {topic}")]
    KafkaCommit {
        topic: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
}

/// Opens the source described by `spec`; call [`Source::resume`] before polling it.
pub fn open(spec: &SourceSpec) -> Result<Box<dyn Source>, SourceError> {
    Ok(match spec {
        SourceSpec::Kafka(config) => Box::new(kafka::KafkaSource::open(config)?),
        SourceSpec::File(path) => Box::new(file::FileSource::open(path)?),
        SourceSpec::Stdin => Box::new(stdin::StdinSource::new()),
        SourceSpec::Demo(config) => Box::new(demo::DemoSource::new(config)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        assert_eq!(
            "kafka".parse::<SourceSpec>().ok(),
            Some(SourceSpec::Kafka(KafkaConfig::default()))
        );
        assert_eq!(
            "file:/tmp/events.jsonl".parse::<SourceSpec>().ok(),
            Some(SourceSpec::File(PathBuf::from("/tmp/events.jsonl")))
        );
        assert_eq!("stdin".parse::<SourceSpec>().ok(), Some(SourceSpec::Stdin));
        assert_eq!(
            "demo".parse::<SourceSpec>().ok(),
            Some(SourceSpec::Demo(DemoConfig::default()))
        );
        for bad in ["", "file:", "kafak", "File:x", "demo:fast"] {
            let err = bad.parse::<SourceSpec>().err().map(|e| e.to_string());
            let text = err.unwrap_or_default();
            assert!(text.contains("file:PATH"), "{bad:?} gave {text:?}");
        }
    }

    #[test]
    fn configs_fill_in_defaults() -> Result<(), serde_json::Error> {
        let kafka: KafkaConfig = serde_json::from_str(r#"{"topic": "clicks"}"#)?;
        assert_eq!(kafka.brokers, "127.0.0.1:9092");
        assert_eq!(kafka.topic, "clicks");
        assert_eq!(kafka.group, "weft");
        let demo: DemoConfig = serde_json::from_str(r#"{"rate": 5}"#)?;
        assert_eq!((demo.rate, demo.users, demo.seed), (5, 500, 42));
        Ok(())
    }
}
