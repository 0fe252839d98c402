//! The `page_stats` example in every language (`plugins/examples/page-stats/`):
//! each one's documented build command, run from source, for the languages
//! test and the benchmark harness.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// The repository's root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the repository")
        .to_owned()
}

/// Runs `script` with `sh -c` in `dir`; panics with its output if it fails.
pub fn sh(dir: &Path, script: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{script}`: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "`{script}` in {} failed ({}):\n{text}",
        dir.display(),
        out.status
    );
    text
}

/// One language's build of the example: its instance name, its directory,
/// the documented build command, and the component it writes.
pub struct Example {
    pub instance: &'static str,
    pub dir: &'static str,
    pub build: &'static str,
    pub wasm: &'static str,
    /// Its `[[plugins]] limits`, if not the defaults.
    pub limits: Option<&'static str>,
}

pub const EXAMPLES: [Example; 5] = [
    Example {
        instance: "page_stats_rust",
        dir: "plugins",
        build: "cargo build --release --target wasm32-wasip2 -p page-stats",
        wasm: "target/wasm32-wasip2/release/page_stats.wasm",
        limits: None,
    },
    Example {
        instance: "page_stats_python",
        dir: "plugins/examples/page-stats/python",
        build: "componentize-py -d ../../../../wit -w metric componentize --stub-wasi -p . -p ../../../python page_stats -o page_stats.wasm",
        wasm: "page_stats.wasm",
        limits: None,
    },
    Example {
        instance: "page_stats_js_quickjs",
        dir: "plugins/examples/page-stats/js",
        build: "npm install --no-audit --no-fund && npm run build",
        wasm: "page_stats.wasm",
        limits: None,
    },
    Example {
        instance: "page_stats_js_spidermonkey",
        dir: "plugins/examples/page-stats/js",
        build: "npm run build:spidermonkey",
        wasm: "page_stats_sm.wasm",
        // SpiderMonkey's heap outgrows the default 64 MiB now and then.
        limits: Some("{ memory_mib = 128 }"),
    },
    Example {
        instance: "page_stats_c",
        dir: "plugins/examples/page-stats/c",
        build: "make",
        wasm: "page_stats.wasm",
        limits: None,
    },
];

/// Builds every example from source; returns each with its component.
pub fn build_examples() -> Vec<(&'static Example, PathBuf)> {
    let root = root();
    EXAMPLES
        .iter()
        .map(|example| {
            let dir = root.join(example.dir);
            sh(&dir, example.build);
            let path = dir.join(example.wasm);
            assert!(path.exists(), "{} built no {}", example.dir, example.wasm);
            (example, path)
        })
        .collect()
}
