//! The `weft` binary under test: started on a free port with its own data
//! directory, asked over real HTTP, stopped or killed with SIGKILL.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use crate::wait_for;

/// The `weft` program under test: `weft-under-test`, built by `cargo test`
/// beside the test binaries (`target/<profile>/`).
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let bin = profile_dir.join(format!("weft-under-test{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: `cargo test -p weft-tests` builds it",
        bin.display()
    );
    bin
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub struct Weft {
    child: Child,
    pub base: String,
    /// Where its stderr goes.
    log: PathBuf,
}

/// Runs `weft run` with `args` and `--data-dir data_dir`, expecting it to exit
/// within `within`; returns its exit status and its stderr.
pub fn run_to_exit(
    data_dir: &Path,
    args: &[&str],
    within: Duration,
) -> (std::process::ExitStatus, String) {
    let log = data_dir.with_extension("exit.log");
    let mut child = Command::new(binary())
        .arg("run")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", free_port()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("a log file"))
        .spawn()
        .expect("start weft");
    let status = wait_for("weft to exit", within, || {
        child.try_wait().map_err(|e| e.to_string())
    });
    (status, std::fs::read_to_string(&log).unwrap_or_default())
}

impl Weft {
    /// Starts `weft run` with `args` plus a free `--listen` port and `data_dir`,
    /// and waits until its API answers.
    pub fn start(data_dir: &Path, args: &[&str]) -> Weft {
        Weft::start_or_exit(data_dir, args)
            .unwrap_or_else(|(status, log)| panic!("weft exited early with {status}:\n{log}"))
    }

    /// Like [`Weft::start`], but a `weft` that exits before its API answers
    /// is an `Err` with its exit status and its stderr.
    pub fn start_or_exit(
        data_dir: &Path,
        args: &[&str],
    ) -> Result<Weft, (std::process::ExitStatus, String)> {
        let port = free_port();
        let log_path = data_dir.with_extension(format!("{port}.log"));
        let log = std::fs::File::create(&log_path).expect("a log file");
        let child = Command::new(binary())
            .arg("run")
            .args(args)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            // WEFT_TEST_LOG (e.g. `info,weft_source=trace`) when debugging a test.
            .env(
                "WEFT_LOG",
                std::env::var("WEFT_TEST_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start weft");
        let mut weft = Weft {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log: log_path,
        };
        let exited = wait_for("weft's API to answer", Duration::from_secs(120), || {
            if let Ok(Some(status)) = weft.child.try_wait() {
                return Ok(Some(Some(status)));
            }
            Ok(weft.try_get("/api/status").ok().map(|_| None))
        });
        match exited {
            None => Ok(weft),
            Some(status) => Err((status, weft.log())),
        }
    }

    pub fn try_get(&self, path: &str) -> Result<Value, String> {
        let response = match ureq::get(&format!("{}{path}", self.base)).call() {
            Ok(response) => response,
            Err(ureq::Error::Status(code, response)) => {
                let body = response.into_string().unwrap_or_default();
                return Err(format!("GET {path}: status {code}: {body}"));
            }
            Err(e) => return Err(format!("GET {path}: {e}")),
        };
        response.into_json().map_err(|e| e.to_string())
    }

    /// GET `path`; panics on anything but a 2xx JSON answer.
    pub fn get(&self, path: &str) -> Value {
        self.try_get(path)
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// GET `path` expecting an error status; returns (status, JSON body).
    pub fn get_err(&self, path: &str) -> (u16, Value) {
        match ureq::get(&format!("{}{path}", self.base)).call() {
            Err(ureq::Error::Status(code, response)) => {
                (code, response.into_json().expect("a JSON error body"))
            }
            other => panic!(
                "GET {path}: expected an error status, got {:?}",
                other.map(|r| r.status())
            ),
        }
    }

    /// Sends `method path` with `body` and, if given, the admin `token`;
    /// returns the status and the JSON answer, whatever the status.
    pub fn send(&self, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> (u16, Value) {
        let mut request = ureq::request(method, &format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.set("Authorization", &format!("Bearer {token}"));
        }
        let response = match request.send_bytes(body) {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {path}: {e}"),
        };
        let status = response.status();
        let text = response
            .into_string()
            .unwrap_or_else(|e| panic!("{method} {path}: unreadable answer: {e}"));
        let json = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {path}: {status} `{text}` is not JSON: {e}"));
        (status, json)
    }

    /// Waits until `received` messages are read, `buffered` events wait for
    /// the watermark, and `core` has counted `accepted` events.
    pub fn wait_until_processed(&self, received: u64, buffered: u64, accepted: u64) {
        wait_for(
            "weft to process the whole stream",
            Duration::from_secs(300),
            || {
                let status = self.try_get("/api/status")?;
                let core = self.try_get("/api/plugins/core/query")?;
                let done = status["events"]["received"].as_u64() == Some(received)
                    && status["buffered"].as_u64() == Some(buffered)
                    && core["total_events"].as_u64() == Some(accepted);
                if done {
                    Ok(Some(()))
                } else {
                    Err(format!(
                        "status {status}; core total_events {}",
                        core["total_events"]
                    ))
                }
            },
        );
    }

    /// The Prometheus exposition of `/metrics`.
    pub fn metrics(&self) -> String {
        let response = ureq::get(&format!("{}/metrics", self.base))
            .call()
            .unwrap_or_else(|e| panic!("GET /metrics: {e}"));
        response
            .into_string()
            .unwrap_or_else(|e| panic!("GET /metrics: {e}"))
    }

    /// What it has written to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (`STOP`, `CONT`, `TERM`, ...).
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -{signal} failed");
    }

    /// SIGTERM, then waits for the exit (at most `within`); returns its status.
    pub fn terminate(mut self, within: Duration) -> std::process::ExitStatus {
        self.signal("TERM");
        let child = &mut self.child;
        wait_for("weft to exit after SIGTERM", within, || {
            child.try_wait().map_err(|e| e.to_string())
        })
    }

    /// SIGKILL: no chance to checkpoint.
    pub fn kill(mut self) {
        self.child.kill().expect("kill weft");
        self.child.wait().expect("reap weft");
    }
}

impl Drop for Weft {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
