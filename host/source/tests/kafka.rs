//! The Kafka source against a real broker: exactly-once delivery across 4 partitions,
//! partition ends, commits to the group, and resuming from a checkpoint.
//!
//! The broker comes from `WEFT_TEST_BROKERS` (default `127.0.0.1:9092`). Without one
//! the test fails, saying how to start one, unless `WEFT_SKIP_KAFKA=1`. Tansu must use
//! its SQLite (or Postgres) storage: with `memory://` it returns nothing for a fetch
//! that starts inside a record batch, so resuming from a checkpoint stalls.
//! The same scenario also runs against librdkafka's mock cluster, which needs no broker.

use std::collections::{BTreeMap, BTreeSet};
use std::error::Error;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Poll, Wake, Waker};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use weft_source::{KafkaConfig, Message, Offsets, Source, SourceSpec};

const PARTITIONS: i32 = 4;
const MESSAGES: usize = 1000;
/// How long any one stage may take before the test gives up.
const STAGE_DEADLINE: Duration = Duration::from_secs(60);

type TestResult = Result<(), Box<dyn Error>>;

#[test]
fn kafka_source_delivers_exactly_once_and_resumes() -> TestResult {
    let Some(brokers) = broker_or_skip()? else {
        return Ok(());
    };
    // The topic (a random name) is left on the broker: tansu 0.6 deletes
    // every topic when asked to delete one, under other tests' feet.
    scenario(&brokers, &|topic| create_topic(&brokers, topic))?;
    Ok(())
}

/// The same against librdkafka's built-in mock cluster, which needs no broker: it
/// covers the source wherever no real one runs.
#[test]
fn kafka_source_works_with_the_librdkafka_mock_cluster() -> TestResult {
    let cluster = MockCluster::new(1)?;
    let brokers = cluster.bootstrap_servers();
    scenario(&brokers, &|topic| {
        Ok(cluster.create_topic(topic, PARTITIONS, 1)?)
    })?;
    Ok(())
}

/// A message without a payload is handed over empty, not skipped: the pipeline
/// counts it as a rejected event.
#[test]
fn tombstones_are_delivered_empty() -> TestResult {
    log_to_test_output();
    let cluster = MockCluster::new(1)?;
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("tombstones", 1, 1)?;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()?;
    let record = BaseRecord::<str, str>::to("tombstones")
        .key("a")
        .payload("{}");
    producer.send(record).map_err(|(error, _)| error)?;
    let record = BaseRecord::<str, ()>::to("tombstones").key("a");
    producer.send(record).map_err(|(error, _)| error)?;
    producer.flush(Duration::from_secs(30))?;

    let mut source = weft_source::open(&SourceSpec::Kafka(KafkaConfig {
        brokers,
        topic: "tombstones".to_owned(),
        group: "tombstones".to_owned(),
        options: BTreeMap::new(),
        instance_id: None,
    }))?;
    source.resume(&Offsets::new(), None)?;
    let messages = read_until(source.as_mut(), "both messages", |out, caught_up| {
        out.len() >= 2 && caught_up.contains(&0)
    })?;
    let payloads: Vec<&[u8]> = messages.iter().map(|m| &m.payload[..]).collect();
    assert_eq!(payloads, [&b"{}"[..], &b""[..]]);
    Ok(())
}

/// Produces to a new topic, reads it all, commits, and resumes from a checkpoint with
/// a second source. Returns the topic's name.
fn scenario(
    brokers: &str,
    create_topic: &dyn Fn(&str) -> TestResult,
) -> Result<String, Box<dyn Error>> {
    log_to_test_output();
    let brokers = brokers.to_owned();
    let suffix: u64 = rand::random();
    let topic = format!("weft-source-test-{suffix:016x}");
    let group = format!("weft-source-test-{suffix:016x}");
    create_topic(&topic)?;
    produce(&brokers, &topic)?;

    // Read everything: each message exactly once, and every partition reaches its end.
    let config = KafkaConfig {
        brokers: brokers.clone(),
        topic: topic.clone(),
        group: group.clone(),
        // A short session timeout speeds up the second source joining the group;
        // librdkafka's mock cluster otherwise waits out the first one's 45 s.
        options: BTreeMap::from([("session.timeout.ms".to_owned(), "6000".to_owned())]),
        instance_id: None,
    };
    let mut source = weft_source::open(&SourceSpec::Kafka(config.clone()))?;
    source.resume(&Offsets::new(), None)?;
    let all_partitions: BTreeSet<i32> = (0..PARTITIONS).collect();
    let messages = read_until(
        source.as_mut(),
        "all messages and partition ends",
        |out, caught_up| out.len() >= MESSAGES && *caught_up == all_partitions,
    )?;
    let mut payloads: Vec<String> = messages
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    payloads.sort();
    let mut expected: Vec<String> = (0..MESSAGES).map(|i| format!(r#"{{"n":{i}}}"#)).collect();
    expected.sort();
    assert_eq!(payloads, expected, "not every message arrived exactly once");
    let counts = per_partition_counts(&messages);
    assert_eq!(
        counts.len(),
        PARTITIONS as usize,
        "messages in partitions {counts:?}"
    );
    for (partition, &count) in &counts {
        let offsets: Vec<i64> = messages
            .iter()
            .filter(|m| m.partition == *partition)
            .map(|m| m.offset)
            .collect();
        assert_eq!(
            offsets,
            (0..count).collect::<Vec<_>>(),
            "offsets of partition {partition}"
        );
    }
    let description = source.describe();
    assert_eq!(description["kind"], "kafka");
    assert_eq!(description["topic"], topic.as_str());
    assert_eq!(description["group"], group.as_str());
    assert_eq!(description["brokers"], brokers.as_str());
    assert_eq!(description["lag"], 0, "lag once caught up: {description}");

    // Commit the middle of each partition and see the group record it.
    let middle: Offsets = counts.iter().map(|(&p, &count)| (p, count / 2)).collect();
    source.commit(&middle)?;
    wait_for_committed(source.as_mut(), &brokers, &group, &topic, &middle)?;
    drop(source);

    // A restarted source resumes from its checkpoint, whether that is ahead of or
    // behind what the group committed, and delivers exactly what follows it.
    let resume: Offsets = middle
        .iter()
        .map(|(&p, &mid)| {
            let at = if p % 2 == 0 { mid + 10 } else { mid - 10 };
            (p, at.clamp(0, counts[&p]))
        })
        .collect();
    let mut expected: BTreeSet<(i32, i64)> = BTreeSet::new();
    for (&partition, &count) in &counts {
        expected.extend((resume[&partition]..count).map(|offset| (partition, offset)));
    }
    let mut source = weft_source::open(&SourceSpec::Kafka(config))?;
    source.resume(&resume, None)?;
    let resumed = read_until(
        source.as_mut(),
        "the messages after the checkpoint (if the broker is tansu with memory:// storage: \
         tansu 0.6 returns nothing for a fetch that starts inside a record batch, so resuming \
         there stalls; run it with --storage-engine sqlite://tansu.db instead)",
        |out, caught_up| out.len() >= expected.len() && *caught_up == all_partitions,
    )?;
    let got: Vec<(i32, i64)> = resumed.iter().map(|m| (m.partition, m.offset)).collect();
    let unique: BTreeSet<(i32, i64)> = got.iter().copied().collect();
    assert_eq!(
        unique.len(),
        got.len(),
        "a message was delivered twice after resuming"
    );
    assert_eq!(
        unique, expected,
        "resuming from {resume:?} delivered the wrong messages"
    );
    for message in &resumed {
        let original = messages
            .iter()
            .find(|m| m.partition == message.partition && m.offset == message.offset);
        assert_eq!(original.map(|m| &m.payload), Some(&message.payload));
    }
    drop(source);
    Ok(topic)
}

/// The brokers to test against, or `None` when told to skip; fails when none answers.
fn broker_or_skip() -> Result<Option<String>, Box<dyn Error>> {
    if std::env::var("WEFT_SKIP_KAFKA").is_ok_and(|v| v == "1") {
        println!("Skipped the Kafka source test: WEFT_SKIP_KAFKA=1.");
        return Ok(None);
    }
    let brokers =
        std::env::var("WEFT_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned());
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()?;
    if let Err(error) = probe.fetch_metadata(None, Duration::from_secs(10)) {
        panic!(
            "No Kafka broker answers at {brokers} ({error}).\n\
             Start one, for example:\n    \
             tansu broker --listener-url tcp://127.0.0.1:9092 --advertised-listener-url tcp://127.0.0.1:9092 --storage-engine sqlite://tansu.db &\n\
             or point WEFT_TEST_BROKERS at a running broker, or set WEFT_SKIP_KAFKA=1 to skip this test."
        );
    }
    Ok(Some(brokers))
}

fn admin(brokers: &str) -> Result<AdminClient<DefaultClientContext>, KafkaError> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
}

fn create_topic(brokers: &str, topic: &str) -> TestResult {
    let admin = admin(brokers)?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let new_topic = NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1));
    for result in block_on(admin.create_topics(&[new_topic], &options))? {
        if let Err((name, code)) = result {
            return Err(format!("cannot create topic {name}: {code}").into());
        }
    }
    Ok(())
}

/// Produces `MESSAGES` keyed messages spread over the partitions, and checks they all landed.
fn produce(brokers: &str, topic: &str) -> TestResult {
    let producer: BaseProducer<Deliveries> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .create_with_context(Deliveries::default())?;
    for i in 0..MESSAGES {
        let key = format!("user-{i}");
        let payload = format!(r#"{{"n":{i}}}"#);
        let mut record = BaseRecord::<str, str>::to(topic)
            .key(&key)
            .payload(&payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(100));
                }
                Err((error, _)) => return Err(error.into()),
            }
        }
    }
    producer.flush(Duration::from_secs(30))?;
    let deliveries = producer.context();
    if let Some(error) = lock(&deliveries.failure).take() {
        return Err(format!("producing failed: {error}").into());
    }
    assert_eq!(
        deliveries.delivered.load(Ordering::Relaxed),
        MESSAGES,
        "messages acknowledged by the broker"
    );
    Ok(())
}

/// Counts the messages the broker acknowledged, and keeps a delivery failure.
#[derive(Default)]
struct Deliveries {
    delivered: AtomicUsize,
    failure: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((error, _)) => {
                lock(&self.failure).get_or_insert_with(|| error.to_string());
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Polls `source` until `done` says so, failing after `STAGE_DEADLINE`.
fn read_until(
    source: &mut dyn Source,
    what: &str,
    done: impl Fn(&[Message], &BTreeSet<i32>) -> bool,
) -> Result<Vec<Message>, Box<dyn Error>> {
    let deadline = Instant::now() + STAGE_DEADLINE;
    let mut out = Vec::new();
    while !done(&out, source.caught_up()) {
        if Instant::now() > deadline {
            return Err(format!(
                "timed out waiting for {what}: {} messages, partitions caught up {:?}, source {}",
                out.len(),
                source.caught_up(),
                source.describe()
            )
            .into());
        }
        let more = source.poll(&mut out, 256, Duration::from_millis(200))?;
        assert!(more, "a Kafka source never ends");
    }
    Ok(out)
}

fn per_partition_counts(messages: &[Message]) -> BTreeMap<i32, i64> {
    let mut counts = BTreeMap::new();
    for message in messages {
        *counts.entry(message.partition).or_insert(0) += 1;
    }
    counts
}

/// Waits until the group's committed offsets are `expected`, polling `source` meanwhile
/// so that it serves the commit's result.
fn wait_for_committed(
    source: &mut dyn Source,
    brokers: &str,
    group: &str,
    topic: &str,
    expected: &Offsets,
) -> TestResult {
    let checker: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()?;
    let mut partitions = TopicPartitionList::new();
    for &partition in expected.keys() {
        partitions.add_partition(topic, partition);
    }
    let deadline = Instant::now() + STAGE_DEADLINE;
    loop {
        let mut out = Vec::new();
        source.poll(&mut out, 256, Duration::from_millis(100))?;
        assert!(out.is_empty(), "messages after the end: {out:?}");
        let committed: Offsets = checker
            .committed_offsets(partitions.clone(), Duration::from_secs(10))?
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(offset) => Some((e.partition(), offset)),
                _ => None,
            })
            .collect();
        if committed == *expected {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("the group committed {committed:?}, not {expected:?}").into());
        }
    }
}

/// Shows the source's logs (RUST_LOG, default debug) with a failing test's output.
fn log_to_test_output() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("weft_source=debug"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Runs a future to completion on this thread. The admin client's futures are completed
/// by librdkafka's own threads, so no async runtime is needed.
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut context = std::task::Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
        std::thread::park();
    }
}
