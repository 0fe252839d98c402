//! The command line of `weft` (and of the tests' `weft-under-test`, the
//! same program built inside the test package so `cargo test` builds it).
//!
//! `weft plugin new|test|check` are the plugin author's tools (see
//! [`crate::plugin`]).
//!
//! `weft run` reads events from a source (Kafka, a file, stdin, or the
//! built-in demo), runs them through the plugin pipeline, keeps state in the
//! data directory and serves the HTTP API. Settings come from flags, then
//! `WEFT_*` environment variables, then `--config weft.toml`, then defaults.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use crate::{bundled, config};
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use weft_pipeline::Pipeline;
use weft_runtime::Runtime;
use weft_state::Store;

#[derive(Parser)]
#[command(
    name = "weft",
    version,
    about = "Clickstream analytics through WebAssembly component plugins."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Consume events, run the plugin pipeline and serve the HTTP API.
    Run(config::RunArgs),
    /// Write, test and check plugins: `new`, `test`, `check`.
    #[command(subcommand)]
    Plugin(crate::plugin::PluginCommand),
}

/// Runs the command line; a failure is printed with its causes, one line.
pub fn main() -> std::process::ExitCode {
    match run_cli() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_cli() -> Result<()> {
    let cli = Cli::parse();
    // The plugin tools print their own findings; the host's log says only what went wrong.
    let default_level = match cli.command {
        Command::Run(_) => "info",
        Command::Plugin(_) => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("WEFT_LOG").unwrap_or_else(|_| EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Run(args) => run(args),
        Command::Plugin(command) => crate::plugin::run(command),
    }
}

fn run(args: config::RunArgs) -> Result<()> {
    let mut config = config::resolve(args, bundled::BUNDLED)?;
    std::fs::create_dir_all(&config.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            config.data_dir.display()
        )
    })?;
    let store = Store::open(&config.data_dir.join("state"))?;
    // sled flushes when its last handle is dropped, and on a failing disk
    // that flush can block for ever, so that a start that fails (or a
    // pipeline that stops) would never say why or exit. Every checkpoint is
    // flushed when written; this handle is never dropped.
    std::mem::forget(store.clone());
    if let weft_source::SourceSpec::Kafka(kafka) = &mut config.source {
        kafka.instance_id = Some(store.member_id()?);
    }
    let runtime = Runtime::new(Some(config.data_dir.join("modules")))
        .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let listener = tokio
        .block_on(tokio::net::TcpListener::bind(config.listen))
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let source = weft_source::open(&config.source).context("cannot open the source")?;
    let mut pipeline = Pipeline::open(config.pipeline, source, config.plugins, store, &runtime)?;
    if let weft_source::SourceSpec::Kafka(kafka) = &config.source {
        let url = config.advertise.clone().unwrap_or_else(|| {
            if addr.ip().is_unspecified() {
                tracing::warn!(listen = %addr, "Listening on every interface: other hosts of the group reach this one at the address given with --advertise, which is not set.");
            }
            format!("http://{addr}")
        });
        let group = weft_source::Group::open(kafka).context("cannot join the consumer group")?;
        tracing::info!(group = %kafka.group, changelog = group.changelog_topic(), partitions = group.partitions(), url = %url, "Joining the consumer group.");
        let me = kafka.instance_id.clone().unwrap_or_default();
        pipeline = pipeline.join(group, &kafka.group, &me, &url);
    }
    let shared = pipeline.shared();
    let _watcher = config
        .plugin_dir
        .clone()
        .map(|dir| crate::plugin_dir::watch(dir, shared.clone()))
        .transpose()?;
    if config.admin.token.is_none() {
        tracing::info!(
            "No admin token is set: the admin API (uploads, unloads, rollbacks) is refused."
        );
    }
    tracing::info!(
        listen = %addr,
        source = %config.source_label,
        data_dir = %config.data_dir.display(),
        "weft is running. Open http://{addr}/ — e.g. curl http://{addr}/api/plugins/core/query"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let (ended_tx, ended_rx) = tokio::sync::oneshot::channel::<()>();
    let (result_tx, result_rx) = std::sync::mpsc::channel();
    {
        let stop = stop.clone();
        thread::Builder::new()
            .name("pipeline".into())
            .spawn(move || {
                // A panic (a library's, on a damaged file) ends the pipeline
                // like an error: said, then the process exits.
                let result =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pipeline.run(&stop)))
                        .unwrap_or_else(|_| Err(weft_pipeline::PipelineError::Panicked));
                if let Err(e) = &result {
                    // Said at once: the rest of the shutdown may take a moment.
                    tracing::error!(error = %format!("{e:#}"), "The pipeline stopped.");
                }
                let _ = ended_tx.send(());
                let _ = result_tx.send(result);
            })?;
    }
    let http_stop = stop.clone();
    let served = tokio.block_on(async move {
        let shutdown = async move {
            tokio::select! {
                _ = terminated() => tracing::info!("Stopping: finishing the current batch and writing a checkpoint."),
                _ = ended_rx => tracing::error!("The pipeline stopped; shutting down."),
            }
            http_stop.store(true, Ordering::Relaxed);
        };
        weft_http::serve(
            listener,
            shared,
            weft_http::Options {
                admin: config.admin,
                plugin_dir: config.plugin_dir,
                server: config.http,
            },
            shutdown,
        )
        .await
    });
    stop.store(true, Ordering::Relaxed);
    // A request still waiting (a lifecycle change, a query) holds nothing up.
    tokio.shutdown_timeout(Duration::from_secs(1));
    if let Err(e) = served {
        tracing::error!(error = %e, "The HTTP server failed.");
    }
    // The pipeline finishes its step and writes a last checkpoint. A plugin
    // call still running after STOP_GRACE is interrupted (the last checkpoint
    // then stands); a pipeline stuck even so (a disk that takes no writes) is
    // left behind.
    let result = result_rx.recv_timeout(STOP_GRACE).or_else(|_| {
        tracing::warn!(
            "The pipeline did not stop within {STOP_GRACE:?}; interrupting plugin calls."
        );
        runtime.interrupt_calls();
        result_rx.recv_timeout(INTERRUPT_GRACE)
    });
    match result {
        Ok(Ok(())) => Ok(()),
        // Already logged; exit at once, without the destructors that would
        // flush the store again (which may be what failed).
        Ok(Err(_)) => std::process::exit(1),
        Err(_) => {
            tracing::error!("The pipeline did not stop; exiting without a final checkpoint.");
            std::process::exit(1)
        }
    }
}

/// How long a stopping pipeline may take to finish its step and checkpoint
/// before plugin calls are interrupted...
const STOP_GRACE: Duration = Duration::from_secs(5);
/// ...and how long after that before weft exits regardless.
const INTERRUPT_GRACE: Duration = Duration::from_secs(5);

/// Resolves on Ctrl-C or SIGTERM.
async fn terminated() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
