//! `weft plugin new NAME --lang …`: writes a new plugin project that builds
//! with one command and passes its own test (`weft plugin test … --expect
//! expected.json`) as it is.
//!
//! The files come from `plugins/templates/<lang>/` (with `{{name}}` replaced
//! by the plugin's name), the language's SDK from `plugins/<lang>/` (the Rust
//! SDK from `plugins/sdk/`), the WIT contract from `wit/`, and the sample
//! events and the answer every template starts with from
//! `plugins/templates/{events.jsonl,expected.json}`, all embedded in the
//! binary, so a project made by a `weft` fits that `weft`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};

#[derive(Args)]
pub struct NewArgs {
    /// The plugin's name: letters, digits and `_`, starting with a letter (`-` becomes `_`).
    pub name: String,
    /// The language of the project.
    #[arg(long, value_enum)]
    pub lang: Lang,
    /// Where to create the project [default: ./NAME].
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
    C,
}

/// A file of a new project: where it goes, and its text (`{{name}}` in
/// either is replaced).
type File = (&'static str, &'static str);

macro_rules! repo_file {
    ($path:literal) => {
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../", $path))
    };
}

const WIT: &str = repo_file!("wit/weft.wit");
const EVENTS: &str = repo_file!("plugins/templates/events.jsonl");
/// What every template's starting code answers for [`EVENTS`].
const EXPECTED: &str = repo_file!("plugins/templates/expected.json");

/// Every language's project files, the WIT and the sample events aside.
fn files(lang: Lang) -> &'static [File] {
    match lang {
        Lang::Rust => &[
            (
                "Cargo.toml",
                repo_file!("plugins/templates/rust/Cargo.toml"),
            ),
            (
                ".cargo/config.toml",
                repo_file!("plugins/templates/rust/.cargo/config.toml"),
            ),
            (
                ".gitignore",
                repo_file!("plugins/templates/rust/.gitignore"),
            ),
            ("README.md", repo_file!("plugins/templates/rust/README.md")),
            // The project starts as the bundled `event_counts`.
            ("src/lib.rs", repo_file!("plugins/event-counts/src/lib.rs")),
            (
                "weft-plugin/Cargo.toml",
                repo_file!("plugins/sdk/Cargo.toml"),
            ),
            ("weft-plugin/build.rs", repo_file!("plugins/sdk/build.rs")),
            (
                "weft-plugin/src/lib.rs",
                repo_file!("plugins/sdk/src/lib.rs"),
            ),
            (
                "weft-plugin/src/batch.rs",
                repo_file!("plugins/sdk/src/batch.rs"),
            ),
            (
                "weft-plugin/src/state.rs",
                repo_file!("plugins/sdk/src/state.rs"),
            ),
            (
                "weft-plugin/src/log.rs",
                repo_file!("plugins/sdk/src/log.rs"),
            ),
            ("weft-plugin/src/rt.rs", repo_file!("plugins/sdk/src/rt.rs")),
            (
                "weft-plugin/src/native.rs",
                repo_file!("plugins/sdk/src/native.rs"),
            ),
        ],
        Lang::Python => &[
            ("app.py", repo_file!("plugins/templates/python/app.py")),
            (
                "requirements.txt",
                repo_file!("plugins/templates/python/requirements.txt"),
            ),
            (
                ".gitignore",
                repo_file!("plugins/templates/python/.gitignore"),
            ),
            (
                "README.md",
                repo_file!("plugins/templates/python/README.md"),
            ),
            (
                "weft_plugin.py",
                repo_file!("plugins/python/weft_plugin.py"),
            ),
        ],
        Lang::Js => &[
            (
                "{{name}}.js",
                repo_file!("plugins/templates/js/{{name}}.js"),
            ),
            (
                "package.json",
                repo_file!("plugins/templates/js/package.json"),
            ),
            (
                "package-lock.json",
                repo_file!("plugins/templates/js/package-lock.json"),
            ),
            (".gitignore", repo_file!("plugins/templates/js/.gitignore")),
            ("README.md", repo_file!("plugins/templates/js/README.md")),
            ("weft-plugin.js", repo_file!("plugins/js/weft-plugin.js")),
            ("weft-build.mjs", repo_file!("plugins/js/weft-build.mjs")),
        ],
        Lang::C => &[
            ("{{name}}.c", repo_file!("plugins/templates/c/{{name}}.c")),
            ("Makefile", repo_file!("plugins/templates/c/Makefile")),
            (".gitignore", repo_file!("plugins/templates/c/.gitignore")),
            ("README.md", repo_file!("plugins/templates/c/README.md")),
            ("weft/weft_plugin.h", repo_file!("plugins/c/weft_plugin.h")),
            ("weft/weft_plugin.c", repo_file!("plugins/c/weft_plugin.c")),
            ("weft/weft.mk", repo_file!("plugins/c/weft.mk")),
        ],
    }
}

/// Where the WIT goes: the Rust SDK reads it from its own directory.
fn wit_path(lang: Lang) -> &'static str {
    match lang {
        Lang::Rust => "weft-plugin/wit/weft.wit",
        _ => "wit/weft.wit",
    }
}

/// How to build and test the new project, printed when it is made.
fn next_steps(lang: Lang, name: &str) -> String {
    let (build, wasm) = match lang {
        Lang::Rust => (
            "cargo build --release".to_owned(),
            format!("target/wasm32-wasip2/release/{name}.wasm"),
        ),
        Lang::Python => (
            format!(
                "componentize-py -d wit -w metric componentize --stub-wasi -p . app -o {name}.wasm"
            ),
            format!("{name}.wasm"),
        ),
        Lang::Js => (
            "npm install --no-audit --no-fund && npm run build".to_owned(),
            format!("{name}.wasm"),
        ),
        Lang::C => ("make".to_owned(), format!("{name}.wasm")),
    };
    format!(
        "  build: {build}\n  test:  weft plugin test {wasm} --events events.jsonl --expect expected.json"
    )
}

/// A plugin name fit for every language's identifiers and for weft's
/// instance names.
fn plugin_name(raw: &str) -> Result<String> {
    let name = raw.replace('-', "_");
    if !weft_pipeline::lifecycle::valid_name(&name) {
        bail!(
            "`{raw}` is not a plugin name: use lowercase letters, digits and `_` (or `-`), \
             starting with a letter, at most 64"
        );
    }
    Ok(name)
}

pub fn new(args: &NewArgs) -> Result<()> {
    let name = plugin_name(&args.name)?;
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from(&name));
    if dir.exists()
        && std::fs::read_dir(&dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .next()
            .is_some()
    {
        bail!("{} exists and is not empty", dir.display());
    }
    let fill = |text: &str| text.replace("{{name}}", &name);
    let mut written = Vec::new();
    let all = files(args.lang).iter().copied().chain([
        (wit_path(args.lang), WIT),
        ("events.jsonl", EVENTS),
        ("expected.json", EXPECTED),
    ]);
    for (path, text) in all {
        let path = dir.join(fill(path));
        write(&path, &fill(text))?;
        written.push(path);
    }
    println!(
        "Created the {} plugin `{name}` in {} ({} files).\n{}",
        match args.lang {
            Lang::Rust => "Rust",
            Lang::Python => "Python",
            Lang::Js => "JavaScript",
            Lang::C => "C",
        },
        dir.display(),
        written.len(),
        next_steps(args.lang, &name)
    );
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}
