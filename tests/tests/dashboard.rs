//! The dashboard page in a real headless Chromium (Debian `chromium`, driven
//! by `tests/browser/dashboard.mjs` through `playwright-core`), over the real
//! `weft` binary fed from the real broker:
//!
//! - every panel of the overview shows what the API answers (numbers read
//!   from the DOM, chart data from the page), and so does a custom plugin's
//!   panel declared beside its component in the plugin directory;
//! - a declaration naming an unknown view or plugin shows the error, in the
//!   API and on the page;
//! - a second batch of events changes the numbers with no reload, over the
//!   live stream;
//! - a screenshot is saved to `target/weft-test-artifacts/dashboard.png`.

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::Duration,
};

use serde_json::{Value, json};
use weft_tests::{
    broker::{brokers, create_topic, kafka_args, produce},
    clickstream::generate,
    process::Weft,
    wait_for,
};

/// The page in the browser, one command at a time.
struct Browser {
    child: Child,
    /// Closed on drop: the driver exits at the end of its input.
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Browser {
    fn open(url: &str) -> Browser {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser");
        assert!(
            dir.join("node_modules/playwright-core").exists(),
            "playwright-core is missing: run `npm ci` in {} (scripts/test.sh does)",
            dir.display()
        );
        let mut child = Command::new("node")
            .arg(dir.join("dashboard.mjs"))
            .arg(url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node (scripts/test.sh installs what the browser test needs)");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Browser {
            child,
            stdin: Some(stdin),
            stdout,
        }
    }

    fn ask(&mut self, command: &str) -> Value {
        let stdin = self.stdin.as_mut().expect("the driver's input");
        writeln!(stdin, "{command}").expect("send to the browser driver");
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("read the browser driver");
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the browser driver said {line:?}: {e}"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// `(key, value)` of a map field, largest first (ties by key), at most
/// `limit`: what a bar, pie, doughnut or table panel shows.
fn ranked(map: &Value, limit: Option<usize>) -> Value {
    let mut rows: Vec<(String, Value)> = map
        .as_object()
        .map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let n = |v: &Value| v.as_f64().expect("a number");
    rows.sort_by(|a, b| n(&b.1).total_cmp(&n(&a.1)).then_with(|| a.0.cmp(&b.0)));
    rows.truncate(limit.unwrap_or(usize::MAX));
    json!(rows)
}

/// What each panel of `dashboard` must show, from the API, with the page's
/// time range `window` (`None`: all time): panel id → the expected `value`
/// (number), `points` (time series) or `values` (the rest).
fn expected(weft: &Weft, dashboard: &str, window: Option<&str>) -> Vec<(String, Value)> {
    let declaration = weft.get(&format!("/api/dashboards/{dashboard}"));
    let mut out = Vec::new();
    for (i, panel) in declaration["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .enumerate()
    {
        let id = format!("panel-{dashboard}-{i}");
        let mut params: Vec<String> = panel["query"]
            .as_str()
            .filter(|q| !q.is_empty())
            .map(String::from)
            .into_iter()
            .collect();
        if let (Some(w), true) = (window, panel["range"] == true) {
            params.push(format!("window={w}"));
        }
        let query = params.join("&");
        let answer = weft.get(&format!(
            "/api/plugins/{}/query{}{query}",
            panel["plugin"].as_str().expect("plugin"),
            if query.is_empty() { "" } else { "?" }
        ));
        let field = |name: &Value| answer[name.as_str().expect("field")].clone();
        let limit = panel["limit"].as_u64().map(|l| l as usize);
        let want = match panel["view"].as_str().expect("view") {
            "number" => json!({ "value": field(&panel["field"]) }),
            "funnel" => {
                let steps: Vec<Value> = field(&panel["field"])
                    .as_array()
                    .expect("steps")
                    .iter()
                    .map(|s| json!([s["name"], s["sessions"]]))
                    .collect();
                json!({ "values": steps })
            }
            "line" | "area" => {
                json!({ "points": answer["series"].as_array().expect("series").len() })
            }
            _ => json!({ "values": ranked(&field(&panel["field"]), limit) }),
        };
        out.push((id, want));
    }
    out
}

/// Whether the page shows `want` for every panel; else what differs.
fn matches(snapshot: &Value, want: &[(String, Value)]) -> Result<(), String> {
    let panels = snapshot["panels"].as_array().ok_or("no panels")?;
    for (id, expected) in want {
        let panel = panels
            .iter()
            .find(|p| p["id"] == id.as_str())
            .ok_or_else(|| format!("no panel {id} on the page"))?;
        for (key, value) in expected.as_object().expect("an object") {
            let shown = &panel[key];
            let same = match (shown.as_f64(), value.as_f64()) {
                (Some(a), Some(b)) => a == b,
                _ => shown == value,
            };
            if !same {
                return Err(format!(
                    "{id} ({}): shows {key} {shown}, the API {value}",
                    panel["title"]
                ));
            }
        }
    }
    Ok(())
}

fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/weft-test-artifacts");
    std::fs::create_dir_all(&dir).expect("the artifacts folder");
    dir
}

#[test]
fn the_overview_renders_the_api_live_in_a_real_browser() {
    let stream = generate(61, 200, 5_000);
    let topic = create_topic(1);
    let dir = tempfile::tempdir().expect("a temp dir");
    let plugin_dir = dir.path().join("plugins");
    std::fs::create_dir(&plugin_dir).expect("plugin dir");
    // A custom plugin (a copy of event_counts under another name) with its
    // own dashboard declaration, and a declaration with mistakes.
    std::fs::copy(
        Path::new(weft::bundled::ARTIFACTS_DIR).join("event_counts.wasm"),
        plugin_dir.join("page_events.wasm"),
    )
    .expect("the custom plugin");
    std::fs::write(
        plugin_dir.join("page_events.dashboard.toml"),
        "title = \"Custom plugin\"\n[[panels]]\ntitle = \"Events per type (custom)\"\nplugin = \"page_events\"\nview = \"bar\"\nfield = \"counts\"\n",
    )
    .expect("its declaration");
    std::fs::write(
        plugin_dir.join("broken.dashboard.toml"),
        "title = \"Broken\"\n[[panels]]\ntitle = \"Sparkles\"\nplugin = \"core\"\nview = \"sparkline\"\nfield = \"total_events\"\n\
         [[panels]]\ntitle = \"Ghost\"\nplugin = \"nope\"\nview = \"number\"\nfield = \"x\"\n\
         [[panels]]\ntitle = \"Twice wrong\"\nplugin = \"nope\"\nview = \"sparkline\"\nfield = \"x\"\n\
         [[panels]]\ntitle = \"Wrong shape\"\nplugin = \"funnel\"\nview = \"table\"\nfield = \"steps\"\n",
    )
    .expect("a broken declaration");
    // And a plugin failing on every batch: quarantined, the page must say so.
    std::fs::copy(
        Path::new(weft::bundled::ARTIFACTS_DIR).join("faulty.wasm"),
        plugin_dir.join("flaky.wasm"),
    )
    .expect("the failing plugin");
    std::fs::write(
        plugin_dir.join("flaky.toml"),
        "[config]\nfault = \"error\"\non = \"page_view\"\n",
    )
    .expect("its manifest");
    let config = dir.path().join("weft.toml");
    std::fs::write(&config, "[pipeline]\nidle_ms = 3600000\nbatch_size = 64\n").expect("config");
    let (config, plugin_dir, brokers) = (
        config.display().to_string(),
        plugin_dir.display().to_string(),
        brokers(),
    );
    let half = stream.deliveries.len() / 2;
    produce(&topic, &stream.deliveries[..half]);
    let group = format!("{topic}-ui");
    let mut args = kafka_args(&topic, &group, &brokers, Some(&config));
    args.extend(["--plugins", &plugin_dir]);
    let weft = Weft::start(&dir.path().join("data"), &args);
    let received = |weft: &Weft| weft.get("/api/status")["events"]["received"].as_u64();
    wait_for("the first half to be read", Duration::from_secs(60), || {
        Ok((received(&weft) == Some(half as u64)).then_some(()))
    });

    // The declarations as the API serves them: the broken one says why.
    let list = weft.get("/api/dashboards");
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["overview", "broken", "page_events"], "{list}");
    let broken = weft.get("/api/dashboards/broken");
    assert!(
        broken["panels"][0]["error"]
            .as_str()
            .unwrap()
            .contains("unknown view `sparkline`"),
        "{broken}"
    );
    assert!(
        broken["panels"][1]["error"]
            .as_str()
            .unwrap()
            .contains("no plugin `nope`"),
        "{broken}"
    );
    // Every problem of a panel, not only the first.
    let twice = broken["panels"][2]["error"].as_str().unwrap_or_default();
    assert!(
        twice.contains("unknown view `sparkline`") && twice.contains("no plugin `nope`"),
        "{broken}"
    );

    let mut browser = Browser::open(&weft.base);
    let mut want = expected(&weft, "overview", None);
    want.extend(expected(&weft, "page_events", None));
    let first = wait_for(
        "the page to show the API's numbers",
        Duration::from_secs(60),
        || {
            let snapshot = browser.ask("snapshot");
            matches(&snapshot, &want)?;
            if snapshot["live"] != "live" {
                return Err(format!("live: {}", snapshot["live"]));
            }
            Ok(Some(snapshot))
        },
    );
    // Every overview panel drew (a chart where there is one), and the broken
    // declaration's panels show their errors.
    for panel in first["panels"].as_array().unwrap() {
        match panel["dashboard"].as_str().unwrap() {
            "broken" => assert_eq!(panel["state"], "error", "{panel}"),
            _ => assert_eq!(panel["state"], "ok", "{panel}"),
        }
        if ["bar", "pie", "doughnut", "line"].contains(&panel["view"].as_str().unwrap())
            && panel["dashboard"] != "broken"
        {
            assert_eq!(panel["canvas"], true, "{panel}");
        }
    }
    let errors: Vec<&str> = first["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["error"].as_str())
        .collect();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("unknown view `sparkline`")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("no plugin `nope`")),
        "{errors:?}"
    );
    // An answer of the wrong shape is the panel's error, not "no data".
    assert!(
        errors
            .iter()
            .any(|e| e.contains("`steps` must be a map of name → number; the answer has an array")),
        "{errors:?}"
    );
    let notice = first["notice"].as_str().unwrap_or_default();
    assert!(
        notice.contains("The pipeline is degraded")
            && notice.contains("plugin `flaky` is quarantined")
            && notice.contains("POST /api/plugins/flaky/reload"),
        "notice: {notice}"
    );
    let digits = |v: &Value| {
        v.as_str()
            .unwrap_or_default()
            .replace(|c: char| !c.is_ascii_digit(), "")
    };
    assert_eq!(
        digits(&first["strip"]["received"]),
        half.to_string(),
        "{}",
        first["strip"]
    );
    let status = weft.get("/api/status");
    assert_eq!(
        first["strip"]["partitions"],
        json!(format!(
            "{} on {}",
            status["partitions"].as_array().map_or(0, Vec::len),
            status["workers"]
        )),
        "{}",
        first["strip"]
    );

    // More events: the numbers move with no reload.
    let events_panel = |snapshot: &Value| {
        snapshot["panels"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["title"] == "Events")
            .map(|p| p["value"].clone())
            .expect("the Events panel")
    };
    let total_before = events_panel(&first);
    produce(&topic, &stream.deliveries[half..]);
    wait_for("the rest to be read", Duration::from_secs(60), || {
        Ok((received(&weft) == Some(stream.deliveries.len() as u64)).then_some(()))
    });
    let mut want = expected(&weft, "overview", None);
    want.extend(expected(&weft, "page_events", None));
    let second = wait_for(
        "the page to follow without a reload",
        Duration::from_secs(60),
        || {
            let snapshot = browser.ask("snapshot");
            Ok(matches(&snapshot, &want).is_ok().then_some(snapshot))
        },
    );
    assert_ne!(
        events_panel(&second),
        total_before,
        "the events panel moved"
    );
    assert_eq!(second["notReloaded"], true, "the page was never reloaded");

    // The time range: the last five minutes of event time, then all again.
    for window in [Some("5m"), None] {
        assert_eq!(
            browser.ask(&format!("range {}", window.unwrap_or("all")))["ok"],
            true
        );
        let want = expected(&weft, "overview", window);
        wait_for(
            &format!("the page to show range {window:?}"),
            Duration::from_secs(30),
            || {
                let snapshot = browser.ask("snapshot");
                matches(&snapshot, &want)?;
                Ok(Some(()))
            },
        );
    }

    let shot = artifacts().join("dashboard.png");
    let done = browser.ask(&format!("screenshot {}", shot.display()));
    assert_eq!(done["ok"], true, "{done}");
    assert_eq!(
        done["problems"],
        json!([]),
        "no errors in the page's console"
    );
    assert!(
        std::fs::metadata(&shot)
            .map(|m| m.len() > 10_000)
            .unwrap_or(false)
    );
}
