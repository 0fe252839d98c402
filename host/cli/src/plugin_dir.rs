//! The plugin directory: `NAME.wasm` is instance `NAME`, with an optional
//! manifest `NAME.toml` beside it (`role`, `[config]`, `[limits]`).
//!
//! Read once at start, then watched (notify, debounced): adding or replacing
//! a component or its manifest loads or swaps that instance, removing the
//! component unloads it. Only changes count: reading a file (which weft
//! itself does to load it) is no event, and a file whose content, config and
//! limits are those last seen loads nothing, so a quarantined instance stays
//! quarantined until its file changes. A change is handled [`QUIET`] after it
//! happened; a file still incomplete then fails validation and leaves the
//! running version in place until the write completes.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::{Arc, mpsc},
    time::Duration,
};

use anyhow::{Context, Result};
use notify_debouncer_full::{
    DebounceEventResult, Debouncer, RecommendedCache, new_debouncer,
    notify::{
        self, EventKind,
        event::{AccessKind, AccessMode},
    },
};
use weft_pipeline::{
    PluginSpec, Shared,
    lifecycle::{Manifest, Origin},
};

/// How long after a change a file is (re)loaded.
pub const QUIET: Duration = Duration::from_millis(300);

/// The manifest of instance `name`, or the defaults without one.
fn manifest(dir: &Path, name: &str) -> Result<Manifest> {
    let path = dir.join(format!("{name}.toml"));
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text)
            .with_context(|| format!("{} is not a valid plugin manifest", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Manifest::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// The instance names of the components in `dir`, sorted.
fn names(dir: &Path) -> Result<Vec<String>> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the plugin directory {}", dir.display()))?;
    let mut names = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "wasm")
            && let Some(stem) = path.file_stem().and_then(|s| s.to_str())
        {
            names.push(stem.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// The instances in `dir` at start.
pub fn scan(dir: &Path) -> Result<Vec<PluginSpec>> {
    let mut specs = Vec::new();
    for name in names(dir)? {
        let path = dir.join(format!("{name}.wasm"));
        let wasm =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let manifest = manifest(dir, &name)?;
        specs.push(PluginSpec {
            config: manifest
                .config
                .unwrap_or_else(|| serde_json::Value::Object(Default::default())),
            limits: manifest.limits,
            role: manifest.role,
            origin: Origin::Directory,
            wasm: wasm.into(),
            name,
        });
    }
    Ok(specs)
}

/// Whether an event changes a file (not only reads it).
fn changes(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Watches `dir` and applies its changes to the running pipeline until the
/// returned watcher is dropped.
pub fn watch(
    dir: PathBuf,
    shared: Arc<Shared>,
) -> Result<Debouncer<notify::RecommendedWatcher, RecommendedCache>> {
    let (tx, rx) = mpsc::channel::<DebounceEventResult>();
    let mut debouncer =
        new_debouncer(QUIET, None, tx).context("cannot watch the plugin directory")?;
    debouncer
        .watch(&dir, notify::RecursiveMode::NonRecursive)
        .with_context(|| format!("cannot watch {}", dir.display()))?;
    let mut known = Known::new();
    for spec in scan(&dir)? {
        let seen = Seen::new(&spec.wasm, spec.config, spec.limits);
        known.insert(spec.name, seen);
    }
    tracing::info!(dir = %dir.display(), "Watching the plugin directory.");
    std::thread::Builder::new()
        .name("weft-plugin-dir".into())
        .spawn(move || {
            for result in rx {
                let events = match result {
                    Ok(events) => events,
                    Err(errors) => {
                        for e in errors {
                            tracing::warn!(error = %e, "Watching the plugin directory failed.");
                        }
                        continue;
                    }
                };
                let changed: BTreeSet<String> = events
                    .iter()
                    .filter(|e| changes(&e.kind))
                    .flat_map(|e| e.paths.iter())
                    .filter(|path| path.extension().is_some_and(|x| x == "wasm" || x == "toml"))
                    .filter_map(|path| path.file_stem()?.to_str().map(str::to_owned))
                    .collect();
                for name in changed {
                    sync(&dir, &name, &shared, &mut known);
                }
            }
        })?;
    Ok(debouncer)
}

/// What the directory last held for an instance (and was loaded, or tried).
#[derive(PartialEq)]
struct Seen {
    digest: String,
    config: serde_json::Value,
    limits: weft_runtime::Limits,
}

impl Seen {
    fn new(wasm: &[u8], config: serde_json::Value, limits: weft_runtime::Limits) -> Self {
        Seen {
            digest: weft_runtime::digest(wasm),
            config,
            limits,
        }
    }
}

/// The instances the directory holds, by name.
type Known = BTreeMap<String, Seen>;

/// Brings instance `name` in line with the directory.
fn sync(dir: &Path, name: &str, shared: &Shared, known: &mut Known) {
    let path = dir.join(format!("{name}.wasm"));
    let wasm = match std::fs::read(&path) {
        Ok(wasm) => wasm,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if known.remove(name).is_some() && shared.role(name).is_some() {
                let _ = shared.remove(name);
            }
            return;
        }
        Err(e) => {
            return shared.report_failure(
                name,
                "load",
                &format!("cannot read {}: {e}", path.display()),
            );
        }
    };
    let manifest = match manifest(dir, name) {
        Ok(m) => m,
        Err(e) => return shared.report_failure(name, "load", &format!("{e:#}")),
    };
    let config = manifest
        .config
        .clone()
        .unwrap_or_else(|| serde_json::Value::Object(Default::default()));
    let seen = Seen::new(&wasm, config, manifest.limits);
    // A file whose content did not change (a touch, a second notification of
    // one write) reloads nothing, also when its instance is quarantined; only
    // an instance that is gone (unloaded through the API) loads again.
    if shared.role(name).is_some() && known.get(name) == Some(&seen) {
        return;
    }
    known.insert(name.to_owned(), seen);
    // The outcome is reported (log, status, counter) by `deploy` itself.
    let _ = shared.deploy(name, &wasm, manifest, Origin::Directory);
}
