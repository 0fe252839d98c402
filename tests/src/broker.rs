//! The Kafka-protocol test broker: its address, fresh topics, producing.

use std::time::Duration;

use rdkafka::{
    ClientConfig,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer},
};

use crate::clickstream::Delivery;

/// The broker under test: `WEFT_TEST_BROKERS`, or a local default.
pub fn brokers() -> String {
    std::env::var("WEFT_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// The `weft run` arguments to consume `topic` as `group` from `brokers`,
/// with the settings in `config` if given.
pub fn kafka_args<'a>(
    topic: &'a str,
    group: &'a str,
    brokers: &'a str,
    config: Option<&'a str>,
) -> Vec<&'a str> {
    let mut args = vec![
        "--source",
        "kafka",
        "--brokers",
        brokers,
        "--topic",
        topic,
        "--group",
        group,
    ];
    if let Some(config) = config {
        args.extend(["--config", config]);
    }
    args
}

/// A new topic with a random name and `partitions` partitions.
pub fn create_topic(partitions: i32) -> String {
    create_topic_with(partitions, &[])
}

/// Like [`create_topic`], with topic settings (`retention.ms`, ...).
pub fn create_topic_with(partitions: i32, config: &[(&str, &str)]) -> String {
    let name = format!("weft-test-{:016x}", rand::random::<u64>());
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("an admin client");
    let topic = config.iter().fold(
        NewTopic::new(&name, partitions, TopicReplication::Fixed(1)),
        |topic, &(key, value)| topic.set(key, value),
    );
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let runtime = block_on(admin.create_topics([&topic], &opts));
    match runtime {
        Ok(results) => {
            for r in results {
                r.unwrap_or_else(|(t, e)| panic!("cannot create topic {t}: {e}"));
            }
        }
        Err(e) => panic!(
            "cannot reach the test broker at {} ({e}); start one with scripts/test.sh or set WEFT_TEST_BROKERS",
            brokers()
        ),
    }
    name
}

/// Produces every delivery, keyed, in order, and waits until all are acknowledged.
pub fn produce(topic: &str, deliveries: &[Delivery]) {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("linger.ms", "5")
        .set("enable.idempotence", "false")
        .set("max.in.flight.requests.per.connection", "1")
        .create()
        .expect("a producer");
    for d in deliveries {
        let mut record = BaseRecord::to(topic).key(&d.key).payload(&d.payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((e, r)) => {
                    // Queue full: let it drain, then retry the same record.
                    assert!(
                        matches!(
                            e,
                            rdkafka::error::KafkaError::MessageProduction(
                                rdkafka::types::RDKafkaErrorCode::QueueFull
                            )
                        ),
                        "produce failed: {e}"
                    );
                    producer.poll(Duration::from_millis(50));
                    record = r;
                }
            }
        }
    }
    producer
        .flush(Duration::from_secs(60))
        .expect("all messages acknowledged");
}

/// Runs a future to completion on the current thread.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(f)
}
