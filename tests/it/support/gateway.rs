//! Starts the real `switchyard` binary (`serve -c <file>`) on a free loopback port with a
//! config the test writes, captures everything it prints, waits for readiness by polling
//! `GET /health`, and kills it on drop.
//!
//! The access-log line of a request (`"target":"switchyard::access"`, the ledger fields of
//! contract §6) is found by its `request_id` with `access_log`.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::client::{self, HttpClient, Response};
use super::mock_upstream::MockUpstream;

/// The gateway binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_switchyard")
}

/// How long start-up may take (a debug build on a 2-core machine).
const START_TIMEOUT: Duration = Duration::from_secs(30);

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A temporary directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let p = std::env::temp_dir().join(format!(
            "switchyard-it-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `name` in the directory and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, contents).unwrap();
        p
    }
}

impl Default for TempDir {
    fn default() -> Self {
        TempDir::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A free loopback port (bound, read, released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `server.timeouts` block.
#[derive(Debug, Clone)]
pub struct Timeouts {
    pub connect: &'static str,
    pub first_byte: &'static str,
    pub idle: &'static str,
    pub total: &'static str,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: "2s",
            first_byte: "5s",
            idle: "5s",
            total: "30s",
        }
    }
}

/// What a test starts the gateway with. The `server:` block (listen, timeouts, limits) is
/// written by the harness; `body` holds `providers:`, `models:` and anything else.
#[derive(Debug, Clone, Default)]
pub struct Setup {
    pub timeouts: Timeouts,
    /// Extra lines under `server:`, e.g. `  limits: { max_body: 64KiB }`.
    pub server_extra: String,
    pub body: String,
    pub env: Vec<(String, String)>,
}

impl Setup {
    pub fn new(body: impl Into<String>) -> Setup {
        Setup {
            body: body.into(),
            ..Setup::default()
        }
    }

    pub fn timeouts(mut self, t: Timeouts) -> Setup {
        self.timeouts = t;
        self
    }

    pub fn server_extra(mut self, yaml: &str) -> Setup {
        self.server_extra = yaml.to_string();
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Setup {
        self.env.push((k.to_string(), v.to_string()));
        self
    }

    /// The whole config file for a gateway listening on `port`.
    pub fn yaml(&self, port: u16) -> String {
        let t = &self.timeouts;
        let mut s = format!(
            "server:\n  listen: [\"127.0.0.1:{port}\"]\n  timeouts: {{ connect: {}, first_byte: {}, idle: {}, total: {} }}\n",
            t.connect, t.first_byte, t.idle, t.total
        );
        if !self.server_extra.is_empty() {
            s.push_str(self.server_extra.trim_end());
            s.push('\n');
        }
        s.push('\n');
        s.push_str(&self.body);
        if !s.ends_with('\n') {
            s.push('\n');
        }
        s
    }
}

/// The common shape: provider `mock`, model `chat` (alias `gpt-3.5-turbo`) → `upstream-id`.
pub fn one_model(mock: &MockUpstream) -> String {
    format!(
        "providers:\n  mock:\n    type: openai\n    endpoints: [\"{}\"]\n\nmodels:\n  chat:\n    aliases: [gpt-3.5-turbo]\n    targets:\n      - {{ provider: mock, model: upstream-id }}\n    retry_on: [connect, timeout, 429, 500, 502, 503, 504]\n",
        mock.url()
    )
}

/// Everything the process printed, line by line (stdout and stderr together).
#[derive(Default)]
pub struct Output {
    lines: Mutex<Vec<String>>,
}

impl Output {
    fn push(&self, line: String) {
        self.lines.lock().unwrap().push(line);
    }
}

/// A running gateway. Killed on drop.
pub struct Gateway {
    child: Child,
    addr: SocketAddr,
    output: Arc<Output>,
    pub config_path: PathBuf,
    _dir: TempDir,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Every secret the suite hands a gateway (keys, provider keys, passwords, tokens)
        // contains "canary": whatever a test does, none may ever reach the process's output.
        if !std::thread::panicking() {
            let out = self.output_text();
            if let Some(line) = out.lines().find(|l| l.contains("canary")) {
                panic!("a canary secret reached the gateway's output: {line}");
            }
        }
    }
}

fn capture(output: Arc<Output>, pipe: impl std::io::Read + Send + 'static) {
    std::thread::spawn(move || {
        let reader = BufReader::new(pipe);
        for line in reader.split(b'\n') {
            let Ok(line) = line else { return };
            output.push(String::from_utf8_lossy(&line).into_owned());
        }
    });
}

/// Starts `switchyard serve -c CONFIG` (with `--upgrade` when asked) with its output captured.
fn spawn_serve(
    config_path: &Path,
    cwd: &Path,
    env: &[(String, String)],
    upgrade: bool,
) -> Result<(Child, Arc<Output>), String> {
    let mut cmd = Command::new(bin());
    cmd.arg("serve").arg("-c").arg(config_path);
    if upgrade {
        cmd.arg("--upgrade");
    }
    cmd.current_dir(cwd)
        .env("SWITCHYARD_LOG", "info")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().map_err(|e| format!("spawn {}: {e}", bin()))?;
    let output = Arc::new(Output::default());
    if let Some(out) = child.stdout.take() {
        capture(output.clone(), out);
    }
    if let Some(err) = child.stderr.take() {
        capture(output.clone(), err);
    }
    Ok((child, output))
}

impl Gateway {
    /// Starts the gateway with `setup` and waits until `GET /health` answers 200.
    pub async fn start(setup: Setup) -> Gateway {
        let mut last_output = String::new();
        // A freed port can be taken by another test before the gateway binds it: retry.
        for _ in 0..3 {
            match Gateway::try_start(&setup).await {
                Ok(g) => return g,
                Err(out) => last_output = out,
            }
        }
        panic!("the gateway did not become ready; its output:\n{last_output}");
    }

    async fn try_start(setup: &Setup) -> Result<Gateway, String> {
        let dir = TempDir::new();
        let port = free_port();
        let config_path = dir.write("switchyard.yaml", &setup.yaml(port));
        let (child, output) = spawn_serve(&config_path, dir.path(), &setup.env, false)?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut gw = Gateway {
            child,
            addr,
            output,
            config_path,
            _dir: dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = gw.child.try_wait() {
                // Give the reader threads a moment to drain the pipes.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Err(format!("exited with {status}\n{}", gw.output_text()));
            }
            let probe = tokio::time::timeout(
                Duration::from_secs(2),
                client::request(addr, "GET", "/health", &[], b""),
            )
            .await;
            if let Ok(Ok(r)) = probe
                && r.status == 200
            {
                return Ok(gw);
            }
            // Poll interval while the process starts.
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Err(format!(
            "no 200 from /health within {START_TIMEOUT:?}\n{}",
            gw.output_text()
        ))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Rewrites the config file the gateway watches with `setup` (same listen port), in
    /// place, the way an editor without atomic rename saves.
    pub fn write_config(&self, setup: &Setup) {
        std::fs::write(&self.config_path, setup.yaml(self.addr.port())).unwrap();
    }

    /// Starts a second process on the same config with `--upgrade`: it takes this one's
    /// listeners once this one gets SIGQUIT (Pingora's graceful upgrade).
    pub fn spawn_upgrade(&self) -> Gateway {
        let dir = TempDir::new();
        let cwd = self
            .config_path
            .parent()
            .unwrap_or(dir.path())
            .to_path_buf();
        let (child, output) = spawn_serve(&self.config_path, &cwd, &[], true).unwrap();
        Gateway {
            child,
            addr: self.addr,
            output,
            config_path: self.config_path.clone(),
            _dir: dir,
        }
    }

    /// Waits for the process to exit; `None` if it is still running after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends a signal (`"HUP"`, `"TERM"`, `"QUIT"`) to the gateway process.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{sig}");
    }

    /// Everything the gateway printed so far.
    pub fn output_text(&self) -> String {
        self.output.lines.lock().unwrap().join("\n")
    }

    /// The output lines that parse as JSON.
    pub fn json_lines(&self) -> Vec<Value> {
        self.output
            .lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Every access-log line so far.
    pub fn access_lines(&self) -> Vec<Value> {
        self.json_lines()
            .into_iter()
            .filter(|v| v["target"] == "switchyard::access")
            .collect()
    }

    /// Waits (up to 10 s) for the access-log line of `request_id` and returns it.
    pub async fn access_log(&self, request_id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = self
                .access_lines()
                .into_iter()
                .find(|v| v["request_id"] == request_id);
            if let Some(v) = found {
                return v;
            }
            if Instant::now() > deadline {
                panic!(
                    "no access-log line for request_id {request_id} within 10 s; output:\n{}",
                    self.output_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// How many access-log lines carry `request_id`.
    pub fn access_log_count(&self, request_id: &str) -> usize {
        self.access_lines()
            .iter()
            .filter(|v| v["request_id"] == request_id)
            .count()
    }

    /// A fresh raw connection.
    pub async fn client(&self) -> HttpClient {
        HttpClient::connect(self.addr).await.unwrap()
    }

    /// One request on a fresh connection.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        client::request(self.addr, method, path, headers, body)
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str) -> Response {
        self.request("GET", path, &[], b"").await
    }

    /// Polls `/metrics` until `pred` holds on its text (metrics are written in the logging
    /// phase just after a response, gauges by a background tick); panics after 10 s.
    pub async fn metrics_until(&self, pred: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let r = self.get("/metrics").await;
            assert_eq!(r.status, 200);
            let text = r.text();
            if pred(&text) {
                return text;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "metrics never matched; last scrape:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// POSTs a JSON body with `Content-Type: application/json` and an `x-request-id`.
    pub async fn post_json(&self, path: &str, request_id: &str, body: &Value) -> Response {
        self.request(
            "POST",
            path,
            &[
                ("Content-Type", "application/json"),
                ("x-request-id", request_id),
            ],
            body.to_string().as_bytes(),
        )
        .await
    }

    /// Starts a streaming POST and reads the response head; read events with the client.
    pub async fn start_stream(
        &self,
        path: &str,
        request_id: &str,
        body: &Value,
    ) -> (HttpClient, client::Head) {
        let mut c = self.client().await;
        c.send(
            "POST",
            path,
            &[
                ("Content-Type", "application/json"),
                ("x-request-id", request_id),
            ],
            body.to_string().as_bytes(),
        )
        .await
        .unwrap();
        let head = c.read_head().await.unwrap();
        (c, head)
    }
}

/// Runs `switchyard ARGS` to completion with `stdin`; returns (exit code, stdout, stderr).
pub async fn run_cli(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new(bin());
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input.as_bytes()).await.unwrap();
        drop(pipe);
    }
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the CLI did not finish within 30 s")
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
