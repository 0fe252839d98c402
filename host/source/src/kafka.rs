//! The Kafka source: a librdkafka `BaseConsumer` in a consumer group, read to the exact
//! offsets the pipeline checkpointed.
//!
//! Offsets are never committed or stored automatically: the pipeline commits what it has
//! durably processed. On a restart it resumes from its own checkpoint, which wins over
//! the group's committed offsets: partitions are assigned starting at the resumed offset
//! and any older message still arriving is dropped, so nothing is delivered twice.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};
use serde::Deserialize;

use crate::{Identity, KafkaConfig, Message, Offsets, Rebalance, Source, SourceError};

/// Settings exactness relies on; extra options cannot change them.
const FIXED_OPTIONS: [(&str, &str); 3] = [
    ("enable.auto.commit", "false"),
    ("enable.auto.offset.store", "false"),
    ("enable.partition.eof", "true"),
];

/// Defaults; extra options may change them. A restarted host is the same
/// static member (`group.instance.id`, kept in its data directory), so it
/// gets its partitions back without waiting for its old session to expire;
/// the session timeout only decides how soon the partitions of a host that
/// does not come back move (30 s). It is not shorter because the test broker
/// (tansu 0.6) does not renew a static member's session when it rejoins: at
/// 10 s, a host restarted a few times in quick succession was expired right
/// after joining and then never assigned a partition again.
/// The assignment is cooperative-sticky: a rebalance moves only the
/// partitions that must move, and the others keep being read (and keep
/// their state in memory) through it.
const DEFAULT_OPTIONS: [(&str, &str); 3] = [
    ("partition.assignment.strategy", "cooperative-sticky"),
    ("session.timeout.ms", "30000"),
    ("heartbeat.interval.ms", "1000"),
];

/// How often librdkafka reports statistics, which carry the high watermarks for the lag.
const STATISTICS_INTERVAL_MS: &str = "1000";

/// A repeated warning is logged again at most this often.
const WARNING_INTERVAL: Duration = Duration::from_secs(30);

pub(crate) struct KafkaSource {
    config: KafkaConfig,
    consumer: BaseConsumer<Context>,
    /// Next offset per partition: resumed, or after the last message delivered.
    /// Messages before it were processed already and are dropped.
    next: Offsets,
    caught_up: BTreeSet<i32>,
    /// End offsets learnt from the messages and partition ends seen, for the lag.
    ends: BTreeMap<i32, i64>,
    /// A fatal error met after part of a batch was read, returned by the next poll.
    pending_error: Option<SourceError>,
}

impl KafkaSource {
    pub(crate) fn open(config: &KafkaConfig) -> Result<Self, SourceError> {
        if config.topic.is_empty() || config.topic.contains('\0') {
            return Err(SourceError::KafkaConfig {
                topic: config.topic.clone(),
                reason: "the topic name must be non-empty and must not contain NUL",
            });
        }
        let mut client = ClientConfig::new();
        client
            .set_log_level(log_level())
            .set("bootstrap.servers", &config.brokers)
            .set("group.id", &config.group)
            .set("client.id", "weft")
            .set("auto.offset.reset", "earliest")
            .set("statistics.interval.ms", STATISTICS_INTERVAL_MS);
        for (key, value) in DEFAULT_OPTIONS {
            client.set(key, value);
        }
        // Static membership: a restarted host rejoins as the member it was and gets its
        // partitions back at once, without waiting for its old session to time out.
        if let Some(id) = &config.instance_id {
            client.set("group.instance.id", id);
        }
        for (key, value) in &config.options {
            client.set(key, value);
        }
        for (key, value) in FIXED_OPTIONS {
            if let Some(given) = config.options.get(key)
                && given != value
            {
                tracing::warn!(option = key, given = %given, kept = value, "Ignoring a Kafka option the source relies on.");
            }
            client.set(key, value);
        }
        let consumer: BaseConsumer<Context> = client
            .create_with_context(Context::new(&config.topic))
            .map_err(|source| SourceError::KafkaCreate {
                brokers: config.brokers.clone(),
                source,
            })?;
        consumer
            .subscribe(&[&config.topic])
            .map_err(|source| SourceError::KafkaSubscribe {
                topic: config.topic.clone(),
                source,
            })?;
        tracing::debug!(brokers = %config.brokers, topic = %config.topic, group = %config.group, "Kafka source subscribed.");
        Ok(Self {
            config: config.clone(),
            consumer,
            next: Offsets::new(),
            caught_up: BTreeSet::new(),
            ends: BTreeMap::new(),
            pending_error: None,
        })
    }

    /// Applies the partitions assigned or revoked by a rebalance: one
    /// assigned resumes where its state says and is not caught up until its
    /// end is seen; one revoked yields nothing more here, so it holds
    /// nothing back, and what this poll read of it (`out[start..]`) is
    /// dropped: its state was checkpointed before, and its new owner reads it.
    fn apply_rebalances(&mut self, out: &mut Vec<Message>, start: usize) {
        let context = self.consumer.context();
        if !context.assignment_changed.swap(false, Ordering::AcqRel) {
            return;
        }
        let mut assignment = lock(&context.assignment);
        for partition in std::mem::take(&mut assignment.removed) {
            self.caught_up.insert(partition);
            self.next.remove(&partition);
            let mut at = start;
            out.retain(|m| {
                at += 1;
                at <= start || m.partition != partition
            });
        }
        for (partition, next) in std::mem::take(&mut assignment.added) {
            self.caught_up.remove(&partition);
            match next {
                Some(next) => self.next.insert(partition, next),
                None => self.next.remove(&partition),
            };
        }
    }

    fn fatal(&self, code: RDKafkaErrorCode) -> SourceError {
        let reason = self
            .consumer
            .client()
            .fatal_error()
            .map(|(_, reason)| reason);
        tracing::error!(topic = %self.config.topic, error = %code, reason = reason.as_deref().unwrap_or(""), "Kafka consumer failed for good.");
        SourceError::KafkaFatal {
            topic: self.config.topic.clone(),
            source: KafkaError::MessageConsumptionFatal(code),
        }
    }

    /// Messages behind the end of the assigned partitions, when known.
    fn lag(&self) -> Option<i64> {
        let context = self.consumer.context();
        let watermarks = lock(&context.high_watermarks);
        let assignment = lock(&context.assignment);
        let mut lag = None;
        for partition in &assignment.assigned {
            let behind = if self.caught_up.contains(partition) {
                Some(0)
            } else {
                let end = watermarks
                    .get(partition)
                    .max(self.ends.get(partition))
                    .copied();
                let next = self.next.get(partition).copied();
                end.zip(next).map(|(end, next)| (end - next).max(0))
            };
            if let Some(behind) = behind {
                *lag.get_or_insert(0) += behind;
            }
        }
        lag
    }
}

impl Source for KafkaSource {
    fn resume(&mut self, offsets: &Offsets, last: Option<&Identity>) -> Result<(), SourceError> {
        if let Some(last) = last.filter(|l| **l != self.identity()) {
            return Err(last.changed(self.identity()));
        }
        // Where each partition resumes is its owner's to say, when it is
        // assigned ([`Rebalance::assigned`]); without an owner, these offsets.
        self.next = offsets.clone();
        *lock(&self.consumer.context().resumed) = offsets.clone();
        Ok(())
    }

    fn identity(&self) -> Identity {
        Identity::Kafka {
            topic: self.config.topic.clone(),
        }
    }

    fn poll(
        &mut self,
        out: &mut Vec<Message>,
        max: usize,
        timeout: Duration,
    ) -> Result<bool, SourceError> {
        if let Some(error) = self.pending_error.take() {
            return Err(error);
        }
        let deadline = Instant::now() + timeout;
        let start = out.len();
        // Wait only for the first message or partition end; then take what is already there.
        let mut waiting = true;
        while out.len() - start < max {
            let wait = if waiting {
                deadline.saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            match self.consumer.poll(wait) {
                // Nothing ready, or only an internal event such as a rebalance was served.
                None => {
                    if !waiting || wait.is_zero() {
                        break;
                    }
                }
                Some(Ok(message)) => {
                    let (partition, offset) = (message.partition(), message.offset());
                    if self.next.get(&partition).is_some_and(|&next| offset < next) {
                        tracing::trace!(
                            partition,
                            offset,
                            "Dropped a Kafka message processed before."
                        );
                        continue;
                    }
                    // A tombstone is delivered empty: the pipeline rejects it as not JSON.
                    let payload = message.payload().map(<[u8]>::to_vec).unwrap_or_default();
                    out.push(Message {
                        payload,
                        partition,
                        offset,
                        key: message.key().map(<[u8]>::to_vec),
                    });
                    self.next.insert(partition, offset + 1);
                    self.caught_up.remove(&partition);
                    let end = self.ends.entry(partition).or_insert(0);
                    *end = (*end).max(offset + 1);
                    waiting = false;
                }
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    self.caught_up.insert(partition);
                    if let Some(&next) = self.next.get(&partition) {
                        let end = self.ends.entry(partition).or_insert(next);
                        *end = (*end).max(next);
                    }
                    waiting = false;
                }
                Some(Err(KafkaError::MessageConsumptionFatal(code))) => {
                    let error = self.fatal(code);
                    if out.len() == start {
                        return Err(error);
                    }
                    self.pending_error = Some(error);
                    break;
                }
                // Transient: the context logged it, and librdkafka retries by itself.
                Some(Err(error)) => {
                    tracing::trace!(%error, "Kafka consumer poll returned a transient error.");
                }
            }
            self.apply_rebalances(out, start);
            if lock(&self.consumer.context().failure).is_some() {
                break;
            }
        }
        self.apply_rebalances(out, start);
        if let Some(failure) = lock(&self.consumer.context().failure).take() {
            return Err(SourceError::Rebalance(failure));
        }
        Ok(true)
    }

    fn caught_up(&self) -> &BTreeSet<i32> {
        &self.caught_up
    }

    fn partitions(&self) -> BTreeSet<i32> {
        lock(&self.consumer.context().assignment).assigned.clone()
    }

    fn commit(&mut self, offsets: &Offsets) -> Result<(), SourceError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let topic = &self.config.topic;
        let error = |source| SourceError::KafkaCommit {
            topic: topic.clone(),
            source,
        };
        let mut list = TopicPartitionList::with_capacity(offsets.len());
        for (&partition, &offset) in offsets {
            list.add_partition_offset(topic, partition, Offset::Offset(offset))
                .map_err(error)?;
        }
        // The result arrives later, in `Context::commit_callback`.
        self.consumer
            .commit(&list, CommitMode::Async)
            .map_err(error)
    }

    fn set_rebalance(&mut self, owner: Box<dyn Rebalance>) {
        *lock(&self.consumer.context().owner) = Some(owner);
    }

    fn describe(&self) -> serde_json::Value {
        let assigned = self.partitions();
        let mut description = serde_json::json!({
            "kind": "kafka",
            "brokers": self.config.brokers,
            "topic": self.config.topic,
            "group": self.config.group,
            "partitions": assigned,
            "caught_up": self.caught_up,
        });
        if let (Some(lag), Some(fields)) = (self.lag(), description.as_object_mut()) {
            fields.insert("lag".to_owned(), lag.into());
        }
        // Each assigned partition's end, for its lag in the status.
        let watermarks = lock(&self.consumer.context().high_watermarks);
        let ends: BTreeMap<String, i64> = assigned
            .iter()
            .filter_map(|p| {
                let end = watermarks.get(p).max(self.ends.get(p)).copied()?;
                Some((p.to_string(), end))
            })
            .collect();
        description["ends"] = serde_json::json!(ends);
        description
    }
}

/// State librdkafka's callbacks share with the source. The callbacks run on the
/// pipeline thread inside `poll`, except logging, which may come from librdkafka's own threads.
struct Context {
    topic: String,
    /// The owner of the partitions' state, asked at each rebalance.
    owner: Mutex<Option<Box<dyn Rebalance>>>,
    /// Where a partition starts when there is no owner: the offsets given to `resume`.
    resumed: Mutex<Offsets>,
    /// Why the owner could not take or give up a partition; the next poll fails with it.
    failure: Mutex<Option<String>>,
    assignment: Mutex<Assignment>,
    /// Set when `assignment` has changes the source has not applied yet.
    assignment_changed: AtomicBool,
    /// High watermark per partition, from librdkafka's statistics.
    high_watermarks: Mutex<BTreeMap<i32, i64>>,
    warnings: Mutex<Warnings>,
}

/// Partitions assigned to this consumer, and the changes the source has yet to apply.
#[derive(Default)]
struct Assignment {
    assigned: BTreeSet<i32>,
    /// Assigned, with where each resumes (`None`: its beginning).
    added: Vec<(i32, Option<i64>)>,
    removed: Vec<i32>,
}

impl Context {
    fn new(topic: &str) -> Self {
        Self {
            topic: topic.to_owned(),
            owner: Mutex::default(),
            resumed: Mutex::default(),
            failure: Mutex::default(),
            assignment: Mutex::default(),
            assignment_changed: AtomicBool::new(false),
            high_watermarks: Mutex::default(),
            warnings: Mutex::default(),
        }
    }

    fn partitions_of(&self, list: &TopicPartitionList) -> Vec<i32> {
        list.elements_for_topic(&self.topic)
            .iter()
            .map(|element| element.partition())
            .collect()
    }

    fn fail(&self, failure: String) {
        tracing::error!(topic = %self.topic, %failure, "A rebalance could not be applied; the source stops.");
        lock(&self.failure).get_or_insert(failure);
    }

    fn record_assignment(&self, list: &TopicPartitionList, assigned: bool) {
        let mut assignment = lock(&self.assignment);
        for element in list.elements_for_topic(&self.topic) {
            let partition = element.partition();
            if assigned {
                let next = match element.offset() {
                    Offset::Offset(next) => Some(next),
                    _ => None,
                };
                assignment.assigned.insert(partition);
                assignment.added.push((partition, next));
            } else {
                assignment.assigned.remove(&partition);
                assignment.removed.push(partition);
            }
        }
        self.assignment_changed.store(true, Ordering::Release);
    }
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(facility, message, "librdkafka logged an error.");
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(facility, message, "librdkafka logged a warning.");
            }
            RDKafkaLogLevel::Notice => {
                tracing::info!(facility, message, "librdkafka logged a notice.")
            }
            RDKafkaLogLevel::Info => {
                tracing::debug!(facility, message, "librdkafka logged a message.")
            }
            RDKafkaLogLevel::Debug => {
                tracing::trace!(facility, message, "librdkafka logged a debug message.")
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // Reaching a partition's end is reported as an error, but is the normal case.
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) {
            return;
        }
        let text = format!("{error}: {reason}");
        if let Some(suppressed) = lock(&self.warnings).admit(&text) {
            tracing::warn!(topic = %self.topic, error = %text, suppressed, "Kafka consumer hit an error; librdkafka keeps retrying.");
        }
    }

    fn stats_raw(&self, statistics: &[u8]) {
        let statistics: Statistics = match serde_json::from_slice(statistics) {
            Ok(statistics) => statistics,
            Err(error) => {
                tracing::trace!(%error, "Ignored librdkafka statistics that did not parse.");
                return;
            }
        };
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        let mut watermarks = lock(&self.high_watermarks);
        for partition in topic.partitions.values() {
            // librdkafka lists an internal partition -1, and -1 for unknown offsets.
            if partition.partition >= 0 && partition.hi_offset >= 0 {
                watermarks.insert(partition.partition, partition.hi_offset);
            }
        }
    }
}

impl ConsumerContext for Context {
    /// Assigns partitions like the default handler, but starting each at the source's
    /// own next offset when it has one, instead of the group's committed offset.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        event: RDKafkaRespErr,
        list: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let result = match event {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let partitions = self.partitions_of(list);
                let resume = match lock(&self.owner).as_mut() {
                    Some(owner) => owner.assigned(&partitions),
                    None => Ok(lock(&self.resumed).clone()),
                };
                match resume {
                    Ok(resume) => {
                        for partition in partitions {
                            let at = resume
                                .get(&partition)
                                .map_or(Offset::Beginning, |&n| Offset::Offset(n));
                            if let Err(error) =
                                list.set_partition_offset(&self.topic, partition, at)
                            {
                                tracing::warn!(partition, %error, "Could not start a Kafka partition where its state resumes.");
                                self.fail(format!("cannot start partition {partition} where its state resumes: {error}"));
                            }
                        }
                        self.record_assignment(list, true);
                    }
                    Err(failure) => self.fail(failure),
                }
                tracing::debug!(topic = %self.topic, partitions = ?list.elements().iter().map(|e| (e.partition(), e.offset())).collect::<Vec<_>>(), "Kafka partitions assigned.");
                if cooperative {
                    consumer.incremental_assign(list)
                } else {
                    consumer.assign(list)
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let partitions = self.partitions_of(list);
                if let Some(owner) = lock(&self.owner).as_mut()
                    && let Err(failure) = owner.revoked(&partitions)
                {
                    self.fail(failure);
                }
                self.record_assignment(list, false);
                tracing::debug!(topic = %self.topic, partitions = list.count(), "Kafka partitions revoked.");
                if cooperative {
                    consumer.incremental_unassign(list)
                } else {
                    consumer.unassign()
                }
            }
            other => {
                tracing::warn!(topic = %self.topic, error = ?other, "Kafka rebalance failed; dropping the assignment.");
                self.record_assignment(list, false);
                if cooperative {
                    consumer.incremental_unassign(list)
                } else {
                    consumer.unassign()
                }
            }
        };
        if let Err(error) = result {
            tracing::warn!(topic = %self.topic, %error, "Kafka consumer could not apply a rebalance.");
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => tracing::trace!(partitions = offsets.count(), "Kafka offsets committed."),
            Err(error) => {
                let text = format!("commit failed: {error}");
                if let Some(suppressed) = lock(&self.warnings).admit(&text) {
                    tracing::warn!(topic = %self.topic, error = %text, suppressed, "Kafka offset commit failed; a later commit will cover it.");
                }
            }
        }
    }
}

/// The part of librdkafka's statistics the lag needs.
#[derive(Deserialize)]
struct Statistics {
    #[serde(default)]
    topics: HashMap<String, TopicStatistics>,
}

#[derive(Deserialize)]
struct TopicStatistics {
    #[serde(default)]
    partitions: HashMap<String, PartitionStatistics>,
}

#[derive(Deserialize)]
struct PartitionStatistics {
    partition: i32,
    hi_offset: i64,
}

/// Rate-limits repeated warnings: each distinct text is logged at first sight and then
/// at most once per [`WARNING_INTERVAL`], with the count of repeats not logged.
#[derive(Default)]
struct Warnings {
    seen: HashMap<String, (Instant, u64)>,
}

impl Warnings {
    /// Whether to log `text` now, and how many repeats went unlogged before it.
    fn admit(&mut self, text: &str) -> Option<u64> {
        let now = Instant::now();
        if let Some((logged_at, suppressed)) = self.seen.get_mut(text) {
            if now.duration_since(*logged_at) < WARNING_INTERVAL {
                *suppressed += 1;
                return None;
            }
            let repeats = std::mem::take(suppressed);
            *logged_at = now;
            return Some(repeats);
        }
        // Error texts name brokers and partitions, so they are few; stay bounded anyway.
        if self.seen.len() >= 256 {
            self.seen.clear();
        }
        self.seen.insert(text.to_owned(), (now, 0));
        Some(0)
    }
}

/// The librdkafka log level that lets through what the tracing subscriber would show,
/// given how [`Context::log`] maps the levels.
fn log_level() -> RDKafkaLogLevel {
    use tracing::level_filters::LevelFilter;
    match LevelFilter::current() {
        LevelFilter::TRACE => RDKafkaLogLevel::Debug,
        LevelFilter::DEBUG => RDKafkaLogLevel::Info,
        LevelFilter::INFO => RDKafkaLogLevel::Notice,
        LevelFilter::WARN => RDKafkaLogLevel::Warning,
        LevelFilter::ERROR => RDKafkaLogLevel::Error,
        _ => RDKafkaLogLevel::Emerg,
    }
}

/// Locks a mutex, carrying on if a panic elsewhere poisoned it: the data is plain state.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_warnings_are_suppressed() {
        let mut warnings = Warnings::default();
        assert_eq!(warnings.admit("broker down"), Some(0));
        assert_eq!(warnings.admit("broker down"), None);
        assert_eq!(warnings.admit("broker down"), None);
        assert_eq!(warnings.admit("other"), Some(0));
        if let Some((logged_at, _)) = warnings.seen.get_mut("broker down") {
            *logged_at -= WARNING_INTERVAL;
        }
        assert_eq!(warnings.admit("broker down"), Some(2));
    }

    #[test]
    fn statistics_give_high_watermarks() {
        let context = Context::new("events");
        let statistics = br#"{"name": "weft#consumer-1", "topics": {
            "events": {"topic": "events", "partitions": {
                "0": {"partition": 0, "hi_offset": 120, "ls_offset": 120},
                "1": {"partition": 1, "hi_offset": -1},
                "-1": {"partition": -1, "hi_offset": -1}}},
            "other": {"partitions": {"0": {"partition": 0, "hi_offset": 7}}}}}"#;
        context.stats_raw(statistics);
        assert_eq!(*lock(&context.high_watermarks), BTreeMap::from([(0, 120)]));
        context.stats_raw(b"not json");
        assert_eq!(*lock(&context.high_watermarks), BTreeMap::from([(0, 120)]));
    }

    #[test]
    fn rejects_a_bad_topic() {
        let config = KafkaConfig {
            topic: String::new(),
            ..KafkaConfig::default()
        };
        assert!(matches!(
            KafkaSource::open(&config),
            Err(SourceError::KafkaConfig { .. })
        ));
    }
}
