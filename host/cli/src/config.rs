//! Settings for `weft run`: flags, then `WEFT_*` environment variables (both
//! through clap), then the `--config` file, then defaults.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::plugin_dir;
use serde::Deserialize;
use weft_pipeline::{PluginSpec, Settings, lifecycle::Origin};
use weft_runtime::Limits;
use weft_source::{DemoConfig, KafkaConfig, SourceSpec};

#[derive(Args, Debug, Default)]
pub struct RunArgs {
    /// Where events come from: `kafka`, `file:PATH` (JSON lines), `stdin` or `demo` [default: demo]
    #[arg(long, env = "WEFT_SOURCE")]
    pub source: Option<String>,
    /// Kafka bootstrap servers [default: 127.0.0.1:9092]
    #[arg(long, env = "WEFT_BROKERS")]
    pub brokers: Option<String>,
    /// Kafka topic [default: events]
    #[arg(long, env = "WEFT_TOPIC")]
    pub topic: Option<String>,
    /// Kafka consumer group [default: weft]
    #[arg(long, env = "WEFT_GROUP")]
    pub group: Option<String>,
    /// Where state, checkpoints and compiled plugins live [default: ./weft-data]
    #[arg(long, env = "WEFT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// HTTP address [default: 127.0.0.1:8080]
    #[arg(long, env = "WEFT_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// The URL other hosts of the consumer group reach this one's HTTP API at, to answer queries for its partitions [default: http://LISTEN]
    #[arg(long, env = "WEFT_ADVERTISE")]
    pub advertise: Option<String>,
    /// A directory of plugin components (`NAME.wasm`, optional `NAME.toml` manifest), watched: adding, replacing or removing a file loads, swaps or unloads that instance
    #[arg(long = "plugins", env = "WEFT_PLUGINS")]
    pub plugin_dir: Option<PathBuf>,
    /// Bearer token of the admin API (uploads, unloads, rollbacks); without one the admin API is refused
    #[arg(long, env = "WEFT_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// A weft.toml with the same keys plus `[pipeline]`, `[http]`, `[demo]`, `[kafka_options]` and `[[plugins]]`
    #[arg(long, env = "WEFT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Read the source from its beginning instead of resuming where the data directory's last checkpoint stopped (needed when the input is not the one the data directory was used with; plugin state and counters are kept)
    #[arg(long)]
    pub reset_source: bool,
    /// Worker threads stepping the partitions (`workers` in `[pipeline]`) [default: one per core]
    #[arg(long, env = "WEFT_WORKERS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,
}

/// The `weft.toml` file.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields, default)]
struct FileConfig {
    source: Option<String>,
    brokers: Option<String>,
    topic: Option<String>,
    group: Option<String>,
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    advertise: Option<String>,
    plugin_dir: Option<PathBuf>,
    admin_token: Option<String>,
    /// Largest component upload through the admin API, in MiB [default: 32].
    upload_limit_mib: Option<usize>,
    /// Extra librdkafka settings, e.g. `"security.protocol" = "SSL"`.
    kafka_options: BTreeMap<String, String>,
    demo: DemoConfig,
    pipeline: Settings,
    http: weft_http::Server,
    plugins: Option<Vec<PluginEntry>>,
}

/// One `[[plugins]]` entry.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct PluginEntry {
    /// Instance name (its state namespace and its name in the API).
    name: String,
    /// A component file, or `bundled:NAME` [default: `bundled:{name}`].
    module: Option<String>,
    /// The instance's config, handed to its `init` as JSON.
    #[serde(default)]
    config: Option<toml::Table>,
    /// What the instance may use: `cpu_ms` per call [default: 200] and
    /// `memory_mib` [default: 64].
    #[serde(default)]
    limits: Limits,
}

/// Everything `weft run` needs.
pub struct RunConfig {
    pub source: SourceSpec,
    pub source_label: String,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Where other hosts of the group reach this one; `None`: the address listened on.
    pub advertise: Option<String>,
    pub pipeline: Settings,
    pub plugins: Vec<PluginSpec>,
    /// The watched plugin directory, if any.
    pub plugin_dir: Option<PathBuf>,
    pub admin: weft_http::Admin,
    pub http: weft_http::Server,
}

/// The default pipeline: the sessionizer, then the three bundled metrics.
const DEFAULT_PIPELINE: &[&str] = &["sessionizer", "core", "event_counts", "funnel"];

pub fn resolve(args: RunArgs, bundled: &[(&str, &[u8])]) -> Result<RunConfig> {
    let file: FileConfig = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            toml::from_str(&text)
                .with_context(|| format!("{} is not a valid weft config", path.display()))?
        }
        None => FileConfig::default(),
    };
    let base = args
        .config
        .as_deref()
        .and_then(Path::parent)
        .unwrap_or(Path::new("."));

    let source_label = args.source.or(file.source).unwrap_or_else(|| "demo".into());
    let mut source: SourceSpec = source_label.parse()?;
    match &mut source {
        SourceSpec::Kafka(k) => {
            let defaults = KafkaConfig::default();
            *k = KafkaConfig {
                brokers: args.brokers.or(file.brokers).unwrap_or(defaults.brokers),
                topic: args.topic.or(file.topic).unwrap_or(defaults.topic),
                group: args.group.or(file.group).unwrap_or(defaults.group),
                options: file.kafka_options,
                instance_id: None,
            };
        }
        SourceSpec::Demo(d) => *d = file.demo,
        SourceSpec::File(_) | SourceSpec::Stdin => {}
    }

    let plugin_dir = args.plugin_dir.or(file.plugin_dir.map(|d| base.join(d)));
    let from_dir = match &plugin_dir {
        Some(dir) => plugin_dir::scan(dir)?,
        None => Vec::new(),
    };
    let entries = file.plugins.unwrap_or_else(|| {
        // The plugin directory may replace a default instance by its name.
        DEFAULT_PIPELINE
            .iter()
            .filter(|n| !from_dir.iter().any(|s| s.name == **n))
            .map(|n| PluginEntry {
                name: (*n).into(),
                module: None,
                config: None,
                limits: Limits::default(),
            })
            .collect()
    });
    let mut plugins = Vec::new();
    for entry in entries {
        let module = entry
            .module
            .unwrap_or_else(|| format!("bundled:{}", entry.name));
        let wasm: Arc<[u8]> = match module.strip_prefix("bundled:") {
            Some(name) => match bundled.iter().find(|(n, _)| *n == name) {
                Some((_, bytes)) => Arc::from(*bytes),
                None => {
                    let known: Vec<_> = bundled.iter().map(|(n, _)| *n).collect();
                    bail!(
                        "plugin `{}`: no bundled plugin `{name}` (bundled: {})",
                        entry.name,
                        known.join(", ")
                    );
                }
            },
            None => {
                let path = base.join(&module);
                std::fs::read(&path)
                    .with_context(|| {
                        format!("plugin `{}`: cannot read {}", entry.name, path.display())
                    })?
                    .into()
            }
        };
        let config = serde_json::to_value(entry.config.unwrap_or_default())?;
        plugins.push(PluginSpec {
            name: entry.name,
            wasm,
            config,
            limits: entry.limits,
            origin: Origin::Config,
            role: None,
        });
    }
    for spec in from_dir {
        if plugins.iter().any(|p| p.name == spec.name) {
            bail!(
                "plugin `{}` is both in [[plugins]] and in the plugin directory; keep one",
                spec.name
            );
        }
        plugins.push(spec);
    }

    Ok(RunConfig {
        source,
        source_label,
        data_dir: args
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("weft-data")),
        listen: args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
        advertise: args.advertise.or(file.advertise),
        pipeline: Settings {
            reset_source: args.reset_source,
            workers: args
                .workers
                .map_or(file.pipeline.workers, usize::from)
                .max(1),
            ..file.pipeline
        },
        http: file.http,
        plugins,
        plugin_dir,
        admin: weft_http::Admin {
            token: args
                .admin_token
                .or(file.admin_token)
                .filter(|t| !t.is_empty()),
            upload_limit: file
                .upload_limit_mib
                .map_or(weft_http::DEFAULT_UPLOAD_LIMIT, |mib| mib << 20),
        },
    })
}
