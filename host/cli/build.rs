//! Builds the bundled plugins (the `plugins/` workspace) for `wasm32-wasip2`
//! and embeds them: `target/release/weft` carries its default pipeline.
//! Like wasmtime's test-programs, it runs a nested cargo with a clean
//! environment.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

/// Bundled plugins: (instance name, crate artifact name).
const BUNDLED: &[(&str, &str)] = &[
    ("sessionizer", "sessionizer"),
    ("core", "core"),
    ("event_counts", "event_counts"),
    ("funnel", "funnel"),
];

fn main() {
    let manifest =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest
        .join("../..")
        .canonicalize()
        .expect("the workspace root");
    let plugins = root.join("plugins");
    watch(&plugins, &root.join("wit"));

    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target_dir = plugins.join("target");
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&plugins)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&target_dir);
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        // The outer build's flags and wrappers are not for the guest build.
        if key.starts_with("CARGO_") && key != "CARGO_HOME"
            || key.starts_with("RUSTC")
            || key == "RUSTFLAGS"
        {
            cmd.env_remove(key.as_ref());
        }
    }
    let status = cmd.status().expect("run cargo for the plugins");
    if !status.success() {
        panic!(
            "building the bundled plugins failed (see above). If the wasm target is missing, \
             run `rustup target add wasm32-wasip2`."
        );
    }

    let out = target_dir.join("wasm32-wasip2/release");
    let mut source = String::from(
        "/// The bundled plugins: (name, component bytes).\npub const BUNDLED: &[(&str, &[u8])] = &[\n",
    );
    for (name, artifact) in BUNDLED {
        let path = out.join(format!("{artifact}.wasm"));
        assert!(path.exists(), "missing {}", path.display());
        source.push_str(&format!(
            "    ({name:?}, include_bytes!({:?})),\n",
            path.display().to_string()
        ));
    }
    source.push_str("];\n");
    source.push_str(&format!(
        "/// Where the plugins workspace's components are, fixtures included.\npub const ARTIFACTS_DIR: &str = {:?};\n",
        out.display().to_string()
    ));
    let dest =
        PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("bundled.rs");
    std::fs::write(dest, source).expect("write bundled.rs");
}

/// Rebuild when the plugin sources or the WIT change (not on `plugins/target`).
fn watch(plugins: &Path, wit: &Path) {
    println!("cargo:rerun-if-changed={}", wit.display());
    for file in ["Cargo.toml", "Cargo.lock", ".cargo"] {
        println!("cargo:rerun-if-changed={}", plugins.join(file).display());
    }
    for entry in std::fs::read_dir(plugins).expect("read plugins/").flatten() {
        if entry.path().is_dir() && !matches!(entry.file_name().to_str(), Some("target" | ".cargo"))
        {
            println!("cargo:rerun-if-changed={}", entry.path().display());
        }
    }
}
