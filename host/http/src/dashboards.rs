//! Dashboard declarations: which plugin answers each panel, and how to show
//! it. The page (`dashboards/web/`) draws them; this module reads and checks
//! them.
//!
//! Declarations are TOML (see `dashboards/overview.toml`). The bundled ones
//! are compiled in; a plugin in the plugin directory may ship its own beside
//! its component, `NAME.dashboard.toml`, read on every request so it
//! appears, changes and goes with the plugin. A declaration is checked
//! against the running plugins each time it is served: a panel naming an
//! unknown plugin, a stage, or an unknown view carries an `error` the page
//! shows in place of the panel; a declaration that does not parse is served
//! with its `error` and no panels.

use std::path::Path;

use serde::{Deserialize, Serialize};
use weft_pipeline::Shared;
use weft_runtime::Role;

/// The dashboards compiled into weft: (name, TOML).
const BUNDLED: &[(&str, &str)] = &[(
    "overview",
    include_str!("../../../dashboards/overview.toml"),
)];

/// What a plugin's declaration file beside its component is called.
const SUFFIX: &str = ".dashboard.toml";

const VIEWS: &[&str] = &[
    "number", "line", "area", "bar", "pie", "doughnut", "table", "funnel",
];
const FORMATS: &[&str] = &["integer", "decimal", "percent", "duration"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Declaration {
    title: String,
    #[serde(default)]
    panels: Vec<PanelDeclaration>,
}

/// One panel as declared.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PanelDeclaration {
    pub title: String,
    /// The metric plugin instance that answers it.
    pub plugin: String,
    pub view: String,
    /// The field of the answer to show (all views but line and area).
    pub field: Option<String>,
    /// The fields of each point of a time series (line and area).
    pub fields: Option<Vec<String>>,
    /// Query parameters always sent, e.g. `bucket=1m`.
    #[serde(default)]
    pub query: String,
    /// Whether the page's time range applies (`window`, `from`, `to`).
    #[serde(default)]
    pub range: bool,
    pub format: Option<String>,
    /// Most entries shown by a bar, pie, doughnut or table.
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize)]
pub struct Panel {
    #[serde(flatten)]
    pub declaration: PanelDeclaration,
    /// Why the panel cannot be drawn.
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Dashboard {
    pub name: String,
    pub title: String,
    /// `bundled`, or the declaration file's path.
    pub source: String,
    /// Why the declaration cannot be used at all.
    pub error: Option<String>,
    pub panels: Vec<Panel>,
}

impl Dashboard {
    pub fn errors(&self) -> usize {
        usize::from(self.error.is_some()) + self.panels.iter().filter(|p| p.error.is_some()).count()
    }
}

/// Every dashboard: the bundled ones, then the plugin directory's by name.
pub fn load(shared: &Shared, plugin_dir: Option<&Path>) -> Vec<Dashboard> {
    let mut out: Vec<Dashboard> = BUNDLED
        .iter()
        .map(|(name, text)| parse(shared, name, "bundled".into(), text))
        .collect();
    let Some(dir) = plugin_dir else {
        return out;
    };
    let mut files: Vec<_> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_str().is_some_and(|p| p.ends_with(SUFFIX)))
            .collect(),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "Cannot list the plugin directory's dashboards.");
            return out;
        }
    };
    files.sort();
    for path in files {
        let file_name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let name = file_name.trim_end_matches(SUFFIX).to_owned();
        let source = path.display().to_string();
        let dashboard = match std::fs::read_to_string(&path) {
            Ok(text) => parse(shared, &name, source, &text),
            Err(e) => Dashboard {
                title: name.clone(),
                name,
                error: Some(format!("cannot read {source}: {e}")),
                source,
                panels: Vec::new(),
            },
        };
        out.push(dashboard);
    }
    out
}

fn parse(shared: &Shared, name: &str, source: String, text: &str) -> Dashboard {
    match toml::from_str::<Declaration>(text) {
        Ok(declaration) => Dashboard {
            name: name.to_owned(),
            title: declaration.title,
            source,
            error: None,
            panels: declaration
                .panels
                .into_iter()
                .map(|p| Panel {
                    error: check(shared, &p).err(),
                    declaration: p,
                })
                .collect(),
        },
        Err(e) => Dashboard {
            name: name.to_owned(),
            title: name.to_owned(),
            error: Some(format!("the declaration ({source}) is not valid: {e}")),
            source,
            panels: Vec::new(),
        },
    }
}

/// Whether `panel` can be drawn with the plugins running now; if not, every
/// reason, joined.
fn check(shared: &Shared, panel: &PanelDeclaration) -> Result<(), String> {
    let mut problems = Vec::new();
    if !VIEWS.contains(&panel.view.as_str()) {
        problems.push(format!(
            "unknown view `{}` (one of: {})",
            panel.view,
            VIEWS.join(", ")
        ));
    }
    if let Some(format) = panel.format.as_deref().filter(|f| !FORMATS.contains(f)) {
        problems.push(format!(
            "unknown format `{format}` (one of: {})",
            FORMATS.join(", ")
        ));
    }
    match panel.view.as_str() {
        "line" | "area" if panel.fields.as_ref().is_none_or(Vec::is_empty) => {
            problems.push(format!("a {} panel needs `fields`", panel.view));
        }
        "line" | "area" => {}
        _ if panel.field.is_none() => {
            problems.push(format!("a {} panel needs `field`", panel.view));
        }
        _ => {}
    }
    match shared.role(&panel.plugin) {
        None => problems.push(format!("no plugin `{}` is running", panel.plugin)),
        Some(role) if role != Role::Metric => problems.push(format!(
            "plugin `{}` is a {role}; only metrics answer queries",
            panel.plugin
        )),
        Some(_) => {}
    }
    match problems.is_empty() {
        true => Ok(()),
        false => Err(problems.join("; ")),
    }
}
