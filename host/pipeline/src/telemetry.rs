//! The pipeline's Prometheus metrics, registered in one registry that the
//! HTTP layer exposes at `/metrics`.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

pub struct Telemetry {
    pub registry: Registry,
    /// Messages by outcome (received, accepted, rejected, duplicate) and
    /// rejected ones by reason: the partitions' checkpointed counters, set
    /// at every scrape ([`Telemetry::count`]), so they count each message
    /// once across restarts and hosts; a partition handed over takes its
    /// counts with it (a drop a `rate()` reads as a reset).
    pub events: IntCounterVec,
    pub rejected: IntCounterVec,
    pub source_lag: IntGauge,
    pub watermark: IntGauge,
    pub buffered: IntGauge,
    pub plugin_batch: HistogramVec,
    pub plugin_errors: IntCounterVec,
    pub checkpoint: Histogram,
    /// Loads, swaps, unloads and rollbacks by plugin and outcome (ok, failed).
    pub plugin_reloads: IntCounterVec,
    /// How long the pipeline waits while a plugin version is swapped in.
    pub swap_pause: Histogram,
    /// Queries a plugin failed (a trap or a limit; not a declined query).
    pub query_errors: IntCounterVec,
    /// 1 for each quarantined plugin.
    pub quarantined: IntGaugeVec,
    /// 1 while the pipeline is degraded (see `Status::health`).
    pub degraded: IntGauge,
    /// Kafka messages whose key is not their user id.
    pub unkeyed: IntCounter,
    /// Partitions open on this host.
    pub partitions: IntGauge,
    /// Partitions restored from the group's changelog.
    pub restores: IntCounter,
    /// Members of the group heard from lately (this host included).
    pub members: IntGauge,
    /// Partitions being restored now.
    pub restoring: IntGauge,
}

impl Telemetry {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("weft".into()), None)?;
        let events = IntCounterVec::new(
            Opts::new("events_total", "Messages by outcome."),
            &["outcome"],
        )?;
        let rejected = IntCounterVec::new(
            Opts::new("rejected_total", "Rejected messages by reason."),
            &["reason"],
        )?;
        let source_lag = IntGauge::new(
            "source_lag",
            "Messages behind the end of the source, when known.",
        )?;
        let watermark = IntGauge::new("watermark_ms", "Event-time watermark, epoch ms.")?;
        let buffered = IntGauge::new(
            "buffered_events",
            "Accepted events waiting for the watermark.",
        )?;
        let buckets = prometheus::exponential_buckets(0.000_05, 2.0, 16)?;
        let plugin_batch = HistogramVec::new(
            HistogramOpts::new(
                "plugin_batch_seconds",
                "Time of one plugin call on a batch.",
            )
            .buckets(buckets.clone()),
            &["plugin"],
        )?;
        let plugin_errors = IntCounterVec::new(
            Opts::new("plugin_errors_total", "Failed plugin calls."),
            &["plugin"],
        )?;
        let checkpoint = Histogram::with_opts(
            HistogramOpts::new("checkpoint_seconds", "Time to write one checkpoint.")
                .buckets(buckets),
        )?;
        let plugin_reloads = IntCounterVec::new(
            Opts::new(
                "plugin_reloads_total",
                "Plugin loads, swaps, unloads and rollbacks by outcome.",
            ),
            &["plugin", "outcome"],
        )?;
        let swap_pause = Histogram::with_opts(
            HistogramOpts::new(
                "plugin_swap_pause_seconds",
                "Time the pipeline waits while a plugin version is swapped in.",
            )
            .buckets(prometheus::exponential_buckets(0.000_01, 2.0, 18)?),
        )?;
        let query_errors = IntCounterVec::new(
            Opts::new(
                "plugin_query_errors_total",
                "Queries a plugin failed on (a trap or a limit); the instance is restarted.",
            ),
            &["plugin"],
        )?;
        let quarantined = IntGaugeVec::new(
            Opts::new("plugin_quarantined", "1 while the plugin is quarantined."),
            &["plugin"],
        )?;
        let degraded = IntGauge::new(
            "degraded",
            "1 while part of the pipeline is out of action (see /api/status health).",
        )?;
        let unkeyed = IntCounter::new(
            "unkeyed_messages_total",
            "Kafka messages whose key is not their user id (the topic must be keyed by user).",
        )?;
        let partitions = IntGauge::new("partitions", "Partitions open on this host.")?;
        let restores = IntCounter::new(
            "restores_total",
            "Partitions restored from the group's changelog (taken over from another host).",
        )?;
        let members = IntGauge::new(
            "group_members",
            "Members of the consumer group heard from lately.",
        )?;
        let restoring = IntGauge::new(
            "restoring_partitions",
            "Partitions being restored from the changelog.",
        )?;
        registry.register(Box::new(restores.clone()))?;
        registry.register(Box::new(members.clone()))?;
        registry.register(Box::new(restoring.clone()))?;
        registry.register(Box::new(unkeyed.clone()))?;
        registry.register(Box::new(partitions.clone()))?;
        registry.register(Box::new(query_errors.clone()))?;
        registry.register(Box::new(quarantined.clone()))?;
        registry.register(Box::new(degraded.clone()))?;
        registry.register(Box::new(events.clone()))?;
        registry.register(Box::new(plugin_reloads.clone()))?;
        registry.register(Box::new(swap_pause.clone()))?;
        registry.register(Box::new(rejected.clone()))?;
        registry.register(Box::new(source_lag.clone()))?;
        registry.register(Box::new(watermark.clone()))?;
        registry.register(Box::new(buffered.clone()))?;
        registry.register(Box::new(plugin_batch.clone()))?;
        registry.register(Box::new(plugin_errors.clone()))?;
        registry.register(Box::new(checkpoint.clone()))?;
        Ok(Telemetry {
            registry,
            events,
            rejected,
            source_lag,
            watermark,
            buffered,
            plugin_batch,
            plugin_errors,
            checkpoint,
            plugin_reloads,
            swap_pause,
            query_errors,
            quarantined,
            degraded,
            unkeyed,
            partitions,
            restores,
            members,
            restoring,
        })
    }

    /// Counts a lifecycle action on `plugin` by `outcome`. Names that are no
    /// valid plugin name (a request for one is refused) are not labels.
    pub fn reloaded(&self, plugin: &str, outcome: &str) {
        if crate::lifecycle::valid_name(plugin) {
            self.plugin_reloads
                .with_label_values(&[plugin, outcome])
                .inc();
        }
    }

    /// Sets the message counters to `counters`, this host's partitions' sum.
    pub fn count(&self, counters: &crate::Counters) {
        let set = |counter: prometheus::IntCounter, n: u64| {
            counter.reset();
            counter.inc_by(n);
        };
        for (outcome, n) in [
            ("received", counters.received),
            ("accepted", counters.accepted),
            ("rejected", counters.rejected),
            ("duplicate", counters.duplicates),
        ] {
            set(self.events.with_label_values(&[outcome]), n);
        }
        self.rejected.reset();
        for (reason, &n) in &counters.rejected_by_reason {
            set(self.rejected.with_label_values(&[reason.as_str()]), n);
        }
    }

    /// The registry's text exposition.
    pub fn render(&self) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}
