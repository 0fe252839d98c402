//! What hosts in one consumer group share through Kafka besides the input:
//! the changelog topic (every partition's checkpoints, restored by the host
//! the partition moves to) and the members topic (each host's HTTP address
//! and partitions, so any host can ask the owner of a partition).
//!
//! Both are topics of the group, named after it (`{group}-changelog`,
//! `{group}-members`), created if missing and compacted where the broker
//! supports it. weft runs no protocol of its own between hosts: Kafka's
//! group assignment says who owns a partition, these topics carry the rest.
//! This module moves bytes; what they mean is the pipeline's.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use futures_executor::block_on;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, Headers, Message as _, OwnedHeaders};
use rdkafka::producer::{BaseRecord, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode as Code;
use rdkafka::{Offset, TopicPartitionList};

use crate::{KafkaConfig, SourceError};

/// How long a metadata request, topic creation or watermark query may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A restore gives up after this long without a record.
const RESTORE_STALL: Duration = Duration::from_secs(60);

/// The largest changelog record (a checkpoint's dedup ids or metadata of a
/// busy partition pass Kafka's default 1 MB): the producer's limit, and the
/// changelog topic's `max.message.bytes` when weft creates it. A broker
/// that caps messages lower needs the topic's limit raised to this.
const MAX_RECORD: usize = 64 << 20;

/// A record by key: a value, or `None` for a tombstone.
pub type Record = (Vec<u8>, Option<Vec<u8>>);

/// The header naming a changelog record's writer (u64 BE): who owned the
/// partition when it was written (see the pipeline's claims).
const WRITER: &str = "weft-writer";

/// A changelog record as read back: where it is, what it says, who wrote
/// it (`None`: a record from before writers were named).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub offset: i64,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
    pub writer: Option<u64>,
}

/// The group's changelog and members topics.
pub struct Group {
    config: KafkaConfig,
    changelog: String,
    members: String,
    /// The input topic's partition count.
    partitions: i32,
    producer: ThreadedProducer<Deliveries>,
    /// Asks the changelog's ends (made once: a rebalance waits for it).
    probe: BaseConsumer,
}

/// Delivery reports go back to the writer waiting for them.
struct Deliveries;

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    /// The record's place in its write, and where to report.
    type DeliveryOpaque = Box<(usize, mpsc::Sender<(usize, KafkaResult<i64>)>)>;

    fn delivery(&self, result: &DeliveryResult<'_>, to: Self::DeliveryOpaque) {
        let (at, to) = *to;
        let _ = to.send((
            at,
            result
                .as_ref()
                .map(|m| m.offset())
                .map_err(|(e, _)| e.clone()),
        ));
    }
}

impl Group {
    /// Connects to the group's topics, creating them if missing: the
    /// changelog with as many partitions as the input topic.
    pub fn open(config: &KafkaConfig) -> Result<Self, SourceError> {
        let error = |reason: String| SourceError::Group {
            group: config.group.clone(),
            reason,
        };
        let mut client = ClientConfig::new();
        client.set("bootstrap.servers", &config.brokers);
        for (key, value) in &config.options {
            // Security and connection settings apply; consumer ones do not.
            if !key.starts_with("group.") && !key.contains("offset") && !key.contains("session") {
                client.set(key, value);
            }
        }
        let probe: BaseConsumer = client
            .create()
            .map_err(|e| error(format!("cannot connect: {e}")))?;
        let partitions = topic_partitions(&probe, &config.topic)
            .map_err(|e| error(format!("cannot read topic {:?}: {e}", config.topic)))?
            .ok_or_else(|| {
                error(format!(
                    "the topic {:?} does not exist (create it with as many partitions as hosts may share)",
                    config.topic
                ))
            })?;
        let changelog = format!("{}-changelog", config.group);
        let members = format!("{}-members", config.group);
        let admin: AdminClient<DefaultClientContext> = client
            .create()
            .map_err(|e| error(format!("cannot connect: {e}")))?;
        create_compacted(&admin, &changelog, partitions).map_err(error)?;
        create_compacted(&admin, &members, 1).map_err(error)?;
        match topic_partitions(&probe, &changelog) {
            Ok(Some(n)) if n >= partitions => {}
            Ok(n) => {
                return Err(error(format!(
                    "the changelog topic {changelog:?} has {} partitions but {:?} has {partitions}: give it as many (kafka-topics --alter --partitions {partitions})",
                    n.unwrap_or(0),
                    config.topic
                )));
            }
            Err(e) => return Err(error(format!("cannot read topic {changelog:?}: {e}"))),
        }
        let producer: ThreadedProducer<Deliveries> = client
            .clone()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.max.bytes", MAX_RECORD.to_string())
            .set("linger.ms", "1")
            .create_with_context(Deliveries)
            .map_err(|e| error(format!("cannot create the changelog producer: {e}")))?;
        Ok(Group {
            config: config.clone(),
            changelog,
            members,
            partitions,
            producer,
            probe,
        })
    }

    /// The input topic's partition count: the partitions a whole answer
    /// covers.
    pub fn partitions(&self) -> i32 {
        self.partitions
    }

    pub fn changelog_topic(&self) -> &str {
        &self.changelog
    }

    /// Appends `records` to changelog partition `part` as `writer`'s, in
    /// order, and waits until the broker has every one; returns their
    /// offsets.
    pub fn write(
        &self,
        part: i32,
        writer: u64,
        records: &[Record],
    ) -> Result<Vec<i64>, SourceError> {
        self.produce(&self.changelog, part, Some(writer), records)
    }

    /// Changelog partition `part`'s end offset: where the next record goes.
    pub fn end(&self, part: i32) -> Result<i64, SourceError> {
        let (_, high) = self
            .probe
            .fetch_watermarks(&self.changelog, part, REQUEST_TIMEOUT)
            .map_err(|e| self.failed(&self.changelog, e))?;
        Ok(high)
    }

    fn produce(
        &self,
        topic: &str,
        part: i32,
        writer: Option<u64>,
        records: &[Record],
    ) -> Result<Vec<i64>, SourceError> {
        let (tx, rx) = mpsc::channel();
        let writer = writer.map(u64::to_be_bytes);
        for (at, (key, value)) in records.iter().enumerate() {
            let mut record = BaseRecord::with_opaque_to(topic, Box::new((at, tx.clone())))
                .partition(part)
                .key(key.as_slice());
            if let Some(writer) = &writer {
                record = record.headers(OwnedHeaders::new().insert(Header {
                    key: WRITER,
                    value: Some(writer),
                }));
            }
            if let Some(value) = value {
                record = record.payload(value.as_slice());
            }
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    // The local queue is full: the background thread drains it.
                    Err((KafkaError::MessageProduction(Code::QueueFull), back)) => {
                        record = back;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err((e, _)) => return Err(self.failed(topic, e)),
                }
            }
        }
        drop(tx);
        let mut offsets = vec![-1; records.len()];
        for _ in records {
            match rx.recv() {
                Ok((at, Ok(offset))) => offsets[at] = offset,
                Ok((_, Err(e))) => return Err(self.failed(topic, e)),
                Err(_) => return Err(self.failed(topic, KafkaError::Canceled)),
            }
        }
        Ok(offsets)
    }

    fn failed(&self, topic: &str, e: KafkaError) -> SourceError {
        let hint = if e.rdkafka_error_code() == Some(Code::MessageSizeTooLarge) {
            format!(
                " (a record of a checkpoint is larger than the broker or the topic accepts; weft writes records of up to {MAX_RECORD} bytes: raise the topic's max.message.bytes to that, or checkpoint more often)"
            )
        } else {
            String::new()
        };
        SourceError::Group {
            group: self.config.group.clone(),
            reason: format!("cannot write to {topic:?}: {e}{hint}"),
        }
    }

    /// The records of changelog partition `part` from `from` (or its
    /// beginning) to its end when asked, in order, and that end;
    /// `progress(read, total)` is told along the way.
    pub fn read(
        &self,
        part: i32,
        from: Option<i64>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(Vec<Logged>, i64), SourceError> {
        let error = |reason: String| SourceError::Group {
            group: self.config.group.clone(),
            reason: format!("reading partition {part} of {:?}: {reason}", self.changelog),
        };
        let (low, high) = self
            .probe
            .fetch_watermarks(&self.changelog, part, REQUEST_TIMEOUT)
            .map_err(|e| error(e.to_string()))?;
        let low = from.map_or(low, |from| from.max(low));
        let total = (high - low).max(0) as u64;
        progress(0, total);
        let mut records = Vec::new();
        if high <= low {
            return Ok((records, high));
        }
        let consumer: BaseConsumer = self
            .reader_config()
            .create()
            .map_err(|e| error(e.to_string()))?;
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&self.changelog, part, Offset::Offset(low))
            .map_err(|e| error(e.to_string()))?;
        consumer.assign(&list).map_err(|e| error(e.to_string()))?;
        let mut last = Instant::now();
        loop {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    last = Instant::now();
                    let writer = m.headers().and_then(|h| {
                        h.iter()
                            .find(|h| h.key == WRITER)
                            .and_then(|h| Some(u64::from_be_bytes(h.value?.try_into().ok()?)))
                    });
                    records.push(Logged {
                        offset: m.offset(),
                        key: m.key().unwrap_or_default().to_vec(),
                        value: m.payload().map(<[u8]>::to_vec),
                        writer,
                    });
                    if records.len() % 4096 == 0 {
                        progress((m.offset() - low + 1) as u64, total);
                    }
                    if m.offset() + 1 >= high {
                        progress(total, total);
                        return Ok((records, high));
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, part, "Changelog read: transient error.")
                }
                None if last.elapsed() > RESTORE_STALL => {
                    return Err(error(format!(
                        "no record for {}s at {} of {total}",
                        RESTORE_STALL.as_secs(),
                        records.len()
                    )));
                }
                None => {}
            }
        }
    }

    fn reader_config(&self) -> ClientConfig {
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &self.config.brokers)
            .set("group.id", format!("{}-reader", self.config.group))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", "earliest");
        client
    }

    /// Keeps this host's record (`announce()`, sent at least every
    /// `every`) in the members topic and everyone's in `seen`, until `stop`;
    /// then removes this host's record. Runs on the calling thread.
    pub fn members(
        &self,
        me: &str,
        every: Duration,
        announce: &dyn Fn() -> Vec<u8>,
        changed: &AtomicBool,
        seen: &Mutex<BTreeMap<String, (Instant, Vec<u8>)>>,
        stop: &AtomicBool,
    ) -> Result<(), SourceError> {
        let error = |reason: String| SourceError::Group {
            group: self.config.group.clone(),
            reason: format!("members topic {:?}: {reason}", self.members),
        };
        let consumer: BaseConsumer = self
            .reader_config()
            .create()
            .map_err(|e| error(e.to_string()))?;
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&self.members, 0, Offset::Beginning)
            .map_err(|e| error(e.to_string()))?;
        consumer.assign(&list).map_err(|e| error(e.to_string()))?;
        let members = self.members.clone();
        let mut sent: Option<Instant> = None;
        while !stop.load(Ordering::Relaxed) {
            if sent.is_none_or(|at| at.elapsed() >= every) || changed.swap(false, Ordering::AcqRel)
            {
                let record = (me.as_bytes().to_vec(), Some(announce()));
                if let Err(e) = self.produce(&members, 0, None, &[record]) {
                    tracing::warn!(error = %e, "Could not announce this host to the group; retrying.");
                }
                sent = Some(Instant::now());
            }
            while let Some(item) = consumer.poll(Duration::from_millis(100)) {
                let Ok(m) = item else { continue };
                let id = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                match m.payload() {
                    Some(value) => seen.insert(id, (Instant::now(), value.to_vec())),
                    None => seen.remove(&id),
                };
            }
        }
        let gone = (me.as_bytes().to_vec(), None);
        self.produce(&members, 0, None, &[gone]).map(|_| ())
    }
}

/// The partition count of `topic`, or `None` if it does not exist.
fn topic_partitions(client: &BaseConsumer, topic: &str) -> KafkaResult<Option<i32>> {
    let metadata = client.fetch_metadata(Some(topic), REQUEST_TIMEOUT)?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.partitions().len() as i32))
}

/// Creates `topic` with `partitions` and `cleanup.policy=compact` unless it
/// exists; a broker that refuses the policy gets the topic without it.
fn create_compacted(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    partitions: i32,
) -> Result<(), String> {
    let options = AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT));
    let mut compact = true;
    loop {
        let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1));
        let max = MAX_RECORD.to_string();
        if compact {
            new = new
                .set("cleanup.policy", "compact")
                .set("max.message.bytes", &max);
        }
        let results = block_on(admin.create_topics([&new], &options))
            .map_err(|e| format!("cannot create topic {topic:?}: {e}"))?;
        match results.into_iter().next() {
            Some(Ok(_)) => {
                tracing::info!(topic, partitions, compact, "Created a topic of the group.");
                return Ok(());
            }
            Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) | None => return Ok(()),
            Some(Err((_, code))) if compact => {
                tracing::warn!(topic, error = %code, "The broker refused a compacted topic; creating it without compaction (the changelog then keeps every checkpoint).");
                compact = false;
            }
            Some(Err((_, code))) => return Err(format!("cannot create topic {topic:?}: {code}")),
        }
    }
}
