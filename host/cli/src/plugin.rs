//! `weft plugin …`: the plugin author's tools.
//!
//! - `new` scaffolds a plugin project in one of the supported languages
//!   (see [`crate::scaffold`]);
//! - `test` runs a metric on sample events in-process, through the same
//!   normalizer, sessionizer, runtime, state and checkpoints as `weft run`,
//!   and prints its answer (or compares it with an expected one); compiled
//!   components are cached in the user's cache directory
//!   (`~/.cache/weft/modules`);
//! - `check` tells whether a component fits a role's world and, if not,
//!   exactly which import or export is missing or mistyped.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use weft_pipeline::{Pipeline, PluginSpec, Settings, lifecycle::Origin};
use weft_runtime::{Limits, Role, Runtime};
use weft_source::SourceSpec;
use weft_state::Store;

use crate::{bundled, scaffold};

#[derive(Subcommand)]
pub enum PluginCommand {
    /// Scaffold a plugin project that builds with one command and passes its own test.
    New(scaffold::NewArgs),
    /// Run a metric plugin on sample events (JSON lines) in-process and print its answer.
    Test(TestArgs),
    /// Tell whether a component fits a role's world, and if not, exactly why.
    Check(CheckArgs),
}

pub fn run(command: PluginCommand) -> Result<()> {
    match command {
        PluginCommand::New(args) => scaffold::new(&args),
        PluginCommand::Test(args) => test(&args),
        PluginCommand::Check(args) => check(&args),
    }
}

#[derive(Args)]
pub struct TestArgs {
    /// The plugin component (a metric).
    pub wasm: PathBuf,
    /// Sample events, one JSON object per line, in any input shape `weft run` accepts.
    #[arg(long)]
    pub events: PathBuf,
    /// The plugin's config, a JSON object (as `[[plugins]] config` would give it).
    #[arg(long, default_value = "{}")]
    pub config: String,
    /// A query parameter, `KEY=VALUE`; repeat for several.
    #[arg(long = "query", value_name = "KEY=VALUE")]
    pub query: Vec<String>,
    /// Instance name [default: the file name without `.wasm`].
    #[arg(long)]
    pub name: Option<String>,
    /// Feed the events to the plugin as they are, without the bundled sessionizer.
    #[arg(long)]
    pub no_sessionizer: bool,
    /// Compare the answer with this JSON file; exit non-zero and show where they differ.
    #[arg(long)]
    pub expect: Option<PathBuf>,
    /// CPU budget per call, ms.
    #[arg(long, default_value_t = Limits::default().cpu_ms)]
    pub cpu_ms: u64,
    /// Memory limit, MiB.
    #[arg(long, default_value_t = Limits::default().memory_mib)]
    pub memory_mib: u64,
}

/// An instance name from a file name, made valid: `Page-Stats.wasm` →
/// `page_stats`.
fn instance_name(wasm: &Path) -> String {
    let stem = wasm
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut name: String = stem
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '_',
        })
        .collect();
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        name.insert_str(0, "plugin_");
    }
    name.truncate(64);
    name
}

fn test(args: &TestArgs) -> Result<()> {
    let wasm: Arc<[u8]> = std::fs::read(&args.wasm)
        .with_context(|| format!("cannot read {}", args.wasm.display()))?
        .into();
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| instance_name(&args.wasm));
    let config: serde_json::Value = serde_json::from_str(&args.config)
        .with_context(|| format!("--config is not JSON: {}", args.config))?;
    let params = args
        .query
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| anyhow!("--query {kv}: expected KEY=VALUE"))
        })
        .collect::<Result<Vec<_>>>()?;
    if !args.events.is_file() {
        bail!("no events file at {}", args.events.display());
    }

    // Compiled once per component, as `weft run` does in its data directory.
    let cache = dirs::cache_dir().map(|d| d.join("weft").join("modules"));
    let runtime = Runtime::new(cache).map_err(|e| anyhow!("{e:#}"))?;
    let module = runtime.load(&name, &wasm)?;
    if module.role() != Role::Metric {
        bail!(
            "{} is a {}; `weft plugin test` runs metrics (a stage runs in front of them: \
             list it before a metric in `weft run`'s [[plugins]])",
            args.wasm.display(),
            module.role()
        );
    }
    let limits = Limits {
        cpu_ms: args.cpu_ms,
        memory_mib: args.memory_mib,
    };
    let spec = |name: &str, wasm: Arc<[u8]>, config| PluginSpec {
        name: name.to_owned(),
        wasm,
        config,
        limits,
        origin: Origin::Config,
        role: None,
    };
    let mut plugins = Vec::new();
    if !args.no_sessionizer {
        let sessionizer = bundled::get("sessionizer").expect("the sessionizer is bundled");
        plugins.push(spec(
            "sessionizer",
            sessionizer.into(),
            serde_json::json!({}),
        ));
    }
    plugins.push(spec(&name, wasm, config));

    let data = tempfile::tempdir().context("cannot create a temporary directory")?;
    let store = Store::open(&data.path().join("state"))?;
    let source = weft_source::open(&SourceSpec::File(args.events.clone()))
        .with_context(|| format!("cannot open {}", args.events.display()))?;
    // The pipeline `weft run` runs, partitions and merged answers included,
    // until it has processed and checkpointed the whole file.
    let started = Pipeline::open(Settings::default(), source, plugins, store, &runtime)?.start()?;
    let shared = started.shared.clone();
    while !started.is_finished() && !started.is_done() {
        std::thread::sleep(Duration::from_millis(10));
    }
    started.stop()?;

    let status = shared.status();
    let events = &status.events;
    eprintln!(
        "{} events read: {} accepted, {} rejected, {} duplicates",
        events.received, events.accepted, events.rejected, events.duplicates
    );
    for (reason, n) in &events.rejected_by_reason {
        eprintln!("  rejected ({reason}): {n}");
    }
    let stats = shared
        .plugin_infos()
        .into_iter()
        .find(|p| p.name == name)
        .ok_or_else(|| anyhow!("plugin `{name}` is not running"))?
        .stats;
    if stats.errors > 0 {
        bail!(
            "{} of {} batches failed; the last failure: {}",
            stats.errors,
            stats.batches,
            stats.last_error.as_deref().unwrap_or("(no message)")
        );
    }
    let answer = shared
        .query(&name, &params)
        .map_err(|e| anyhow!("plugin `{name}`: `query` failed: {e}"))?;
    let answer: serde_json::Value = serde_json::from_str(&answer)
        .with_context(|| format!("plugin `{name}`: `query` answered something not JSON"))?;
    println!("{}", serde_json::to_string_pretty(&answer)?);

    if let Some(path) = &args.expect {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let expected: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        let strict = assert_json_diff::Config::new(assert_json_diff::CompareMode::Strict);
        assert_json_diff::assert_json_matches_no_panic(&answer, &expected, strict)
            .map_err(|diff| anyhow!("the answer differs from {}:\n{diff}", path.display()))?;
        eprintln!("The answer equals {}.", path.display());
    }
    Ok(())
}

#[derive(Args)]
pub struct CheckArgs {
    /// The component to check.
    pub wasm: PathBuf,
    /// The role it must have [default: whichever world it fits].
    #[arg(long, value_parser = ["metric", "stage"])]
    pub role: Option<String>,
}

fn check(args: &CheckArgs) -> Result<()> {
    let bytes = std::fs::read(&args.wasm)
        .with_context(|| format!("cannot read {}", args.wasm.display()))?;
    let runtime = Runtime::new(None).map_err(|e| anyhow!("{e:#}"))?;
    let fit = runtime.check(&bytes)?;
    let file = args.wasm.display();
    println!("{file}: {} bytes", bytes.len());
    println!("  imports: {}", list(&fit.imports));
    println!("  exports:");
    for export in &fit.exports {
        println!("    {export}");
    }
    let wanted = match args.role.as_deref() {
        Some("metric") => Some(Role::Metric),
        Some("stage") => Some(Role::Stage),
        _ => None,
    };
    if let Err(why) = &fit.linked {
        bail!("{file} imports something weft does not provide: {why}");
    }
    match (fit.role(), wanted) {
        (Some(role), None) => {
            println!("{file} fits the `{role}` world (weft:plugin/{role}@0.2.0).");
            Ok(())
        }
        (Some(role), Some(wanted)) if role == wanted => {
            println!("{file} fits the `{role}` world (weft:plugin/{role}@0.2.0).");
            Ok(())
        }
        (_, Some(Role::Metric)) => bail!(
            "{file} does not fit the `metric` world: {}",
            why(&fit.metric)
        ),
        (_, Some(Role::Stage)) => {
            bail!("{file} does not fit the `stage` world: {}", why(&fit.stage))
        }
        (None, None) => bail!(
            "{file} fits neither world.\n  as a metric: {}\n  as a stage: {}",
            why(&fit.metric),
            why(&fit.stage)
        ),
    }
}

fn why(fit: &Result<(), String>) -> &str {
    fit.as_ref().err().map_or("it fits", String::as_str)
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "(none)".into()
    } else {
        items.join(", ")
    }
}
