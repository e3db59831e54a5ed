//! A real headless Chromium for the web UI's tests, driven over WebDriver: it
//! starts `chromedriver` on a port of its own (in a process group of its own, so
//! that the Chromium it launches dies with it), connects a `fantoccini` client,
//! offers the few waits and reads the UI tests need, saves screenshots under
//! `target/ui-screenshots/`, and stops everything it started when closed or
//! dropped.
//!
//! chromedriver is spoken to over plain HTTP on 127.0.0.1, so the client needs
//! no TLS at all.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{free_port, kill_processes_with_marker, workspace_root};

/// The browser's executable (Debian's `chromium` package).
const CHROMIUM: &str = "chromium";
/// The WebDriver server (Debian's `chromium-driver` package).
const CHROMEDRIVER: &str = "chromedriver";
/// The window every test sees, so that screenshots and layouts compare.
const WINDOW: (u32, u32) = (1280, 900);
/// Runs `$1` (chromedriver) with arguments `$2...`, as the process group's
/// leader (`exec`), beside a watchdog subshell that kills the whole group once
/// its standard input (a pipe from the test process, kept as fd 3) reaches its
/// end, which happens when the test process exits, however it dies.
const WATCHDOG: &str = r#"exec 3<&0
(read -r line <&3; kill -s KILL 0) &
program="$1"; shift
exec "$program" "$@" </dev/null 3<&-"#;
/// How long chromedriver may take to answer on its port.
const DRIVER_START: Duration = Duration::from_secs(20);
/// How long Chromium may take to start and open its session.
const SESSION_START: Duration = Duration::from_secs(30);
/// How long closing the session may take before chromedriver is killed anyway.
const SESSION_CLOSE: Duration = Duration::from_secs(10);
/// How often the waits look again.
const POLL: Duration = Duration::from_millis(50);
/// How long an error may wait for the page's URL and source to quote them.
const PAGE_CONTEXT: Duration = Duration::from_secs(5);
/// How much of the page source a timeout's error quotes.
const SOURCE_SNIPPET: usize = 2_000;

/// A headless Chromium under chromedriver, with one WebDriver session.
///
/// Everything it starts (chromedriver, Chromium and Chromium's helpers) runs in
/// one process group that [`Browser::close`] and `Drop` kill, so a test that
/// fails or panics leaves no browser behind.
pub struct Browser {
    /// The session; None once closed.
    client: Option<Client>,
    /// chromedriver, the leader of the process group; None once killed.
    driver: Option<Child>,
    /// The watchdog's pipe: never written, closed when this process dies.
    watchdog_pipe: Option<ChildStdin>,
    /// chromedriver's standard output and error.
    driver_log: PathBuf,
    /// Chromium's fresh profile (`--user-data-dir`) and the driver's log; its
    /// path, unique to this browser, also marks Chromium's command lines.
    profile: tempfile::TempDir,
}

impl Browser {
    /// Why browser tests cannot run here (`chromium` or `chromedriver` missing
    /// from the PATH), or None when they can.
    pub fn unavailable() -> Option<String> {
        let missing: Vec<String> = [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")]
            .iter()
            .filter(|(program, _)| find_on_path(program).is_none())
            .map(|(program, package)| format!("no `{program}` on the PATH (Debian's {package})"))
            .collect();
        (!missing.is_empty()).then(|| missing.join(", "))
    }

    /// Whether browser tests can run here; prints why not, as the container
    /// tests do when Docker is absent. A test starts with
    /// `if !Browser::available() { return; }`.
    ///
    /// With `FERRY_REQUIRE_BROWSER=1` (set by tests/run-all.sh, which installs
    /// them) a missing browser is a failure, not a skip.
    pub fn available() -> bool {
        match Browser::unavailable() {
            Some(reason) if std::env::var_os("FERRY_REQUIRE_BROWSER").is_some_and(|v| v == "1") => {
                panic!("browser tests cannot run: {reason} (FERRY_REQUIRE_BROWSER=1)")
            }
            Some(reason) => {
                eprintln!("browser tests skipped: {reason}");
                false
            }
            None => true,
        }
    }

    /// Starts chromedriver on a free port, waits until it answers, and opens a
    /// session in a fresh headless Chromium (1280x900, a new temporary profile).
    pub async fn start() -> anyhow::Result<Browser> {
        let chromium = find_on_path(CHROMIUM)
            .with_context(|| format!("no `{CHROMIUM}` on the PATH (Debian's chromium)"))?;
        let chromedriver = find_on_path(CHROMEDRIVER).with_context(|| {
            format!("no `{CHROMEDRIVER}` on the PATH (Debian's chromium-driver)")
        })?;
        let profile = tempfile::Builder::new()
            .prefix("ferry-browser-")
            .tempdir()
            .context("temporary folder for the browser")?;
        let driver_log = profile.path().join("chromedriver.log");
        let user_data_dir = profile.path().join("profile");
        let port = free_port();
        let log = std::fs::File::create(&driver_log)
            .with_context(|| format!("cannot create {}", driver_log.display()))?;
        // chromedriver runs in a process group of its own, which the Chromium
        // it launches joins: killing the group kills them all. A watchdog in
        // the group kills it when this process dies without dropping the
        // browser (SIGKILL, Ctrl-C: a terminal's SIGINT reaches only the
        // foreground group): it waits for the end of a pipe whose other end
        // only this process holds.
        let mut driver = Command::new("/bin/sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("sh")
            .arg(&chromedriver)
            .arg(format!("--port={port}"))
            // Chromium's own files (its crash reporter's database above all)
            // go under this browser's folder, not root's home: the crash
            // reporter leaves the process group, and the folder's name in its
            // command line is how `kill` still finds it.
            .env("XDG_CONFIG_HOME", profile.path().join("config"))
            .env("XDG_CACHE_HOME", profile.path().join("cache"))
            .stdin(Stdio::piped())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {}", chromedriver.display()))?;
        let watchdog_pipe = driver.stdin.take();
        let mut browser = Browser {
            client: None,
            driver: Some(driver),
            watchdog_pipe,
            driver_log,
            profile,
        };
        browser.wait_driver_ready(port).await?;
        let capabilities = capabilities(&chromium, &user_data_dir);
        let mut builder = ClientBuilder::new(HttpConnector::new());
        builder.capabilities(capabilities);
        let address = format!("http://127.0.0.1:{port}");
        let connect = builder.connect(&address);
        let client = match tokio::time::timeout(SESSION_START, connect).await {
            Ok(Ok(client)) => client,
            Ok(Err(error)) => bail!(
                "chromedriver could not start Chromium ({}): {error}\nchromedriver's log:\n{}",
                chromium.display(),
                browser.driver_log_text()
            ),
            Err(_) => bail!(
                "Chromium's session did not open within {SESSION_START:?}\nchromedriver's log:\n{}",
                browser.driver_log_text()
            ),
        };
        browser.client = Some(client);
        Ok(browser)
    }

    /// Polls chromedriver's `/status` until it reports ready, at most
    /// [`DRIVER_START`]; fails at once if chromedriver exits.
    async fn wait_driver_ready(&mut self, port: u16) -> anyhow::Result<()> {
        let deadline = Instant::now() + DRIVER_START;
        loop {
            if let Some(driver) = self.driver.as_mut()
                && let Some(status) = driver.try_wait().context("wait for chromedriver")?
            {
                bail!(
                    "chromedriver exited ({status}) before answering on port {port}:\n{}",
                    self.driver_log_text()
                );
            }
            if driver_ready(port).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "chromedriver did not answer on 127.0.0.1:{port} within {DRIVER_START:?}:\n{}",
                    self.driver_log_text()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// What chromedriver has written so far.
    fn driver_log_text(&self) -> String {
        std::fs::read_to_string(&self.driver_log)
            .unwrap_or_else(|error| format!("(cannot read {}: {error})", self.driver_log.display()))
    }

    /// The WebDriver client, for anything the helpers below do not cover.
    pub fn client(&self) -> &Client {
        self.client
            .as_ref()
            .expect("the session is open until the browser is closed")
    }

    /// Opens `url` and waits for the page to load.
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.client()
            .goto(url)
            .await
            .with_context(|| format!("cannot open {url}"))
    }

    /// The URL of the current page.
    pub async fn url(&self) -> anyhow::Result<String> {
        Ok(self
            .client()
            .current_url()
            .await
            .context("cannot read the page's URL")?
            .to_string())
    }

    /// The current page's HTML, as the browser has it now (after scripts ran).
    pub async fn source(&self) -> anyhow::Result<String> {
        self.client()
            .source()
            .await
            .context("cannot read the page source")
    }

    /// Waits until an element matches the CSS selector `css`, polling at most
    /// `timeout`; the error names the selector and the page, and quotes the
    /// start of the page source.
    pub async fn wait_for(&self, css: &str, timeout: Duration) -> anyhow::Result<Element> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.client().find(Locator::Css(css)).await {
                Ok(element) => return Ok(element),
                Err(error) if error.is_no_such_element() => {}
                // An invalid selector or a lost session will not get better.
                Err(error) => bail!("cannot look for `{css}`: {error}"),
            }
            if Instant::now() > deadline {
                bail!(
                    "timed out after {timeout:?} waiting for an element matching `{css}`{}",
                    self.page_context().await
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until the JavaScript expression `condition` is truthy on the page,
    /// polling at most `timeout`; e.g.
    /// `document.querySelectorAll('tr.run').length === 3`.
    pub async fn wait_until_js(&self, condition: &str, timeout: Duration) -> anyhow::Result<()> {
        let script = format!("return Boolean({condition});");
        self.wait_until(&format!("`{condition}`"), timeout, async |browser| {
            let value = browser
                .client()
                .execute(&script, Vec::new())
                .await
                .with_context(|| format!("cannot evaluate `{condition}`"))?;
            Ok((value == Value::Bool(true)).then_some(()))
        })
        .await
    }

    /// Polls `check` until it returns `Some`, at most `timeout`; `what` says in
    /// the error what was awaited. An error from `check` counts as "not yet"
    /// (the element may not exist yet); the last one is quoted on timeout.
    ///
    /// ```text
    /// browser
    ///     .wait_until("three runs listed", timeout, async |b| {
    ///         Ok((b.count("tr.run").await? == 3).then_some(()))
    ///     })
    ///     .await?;
    /// ```
    pub async fn wait_until<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl AsyncFnMut(&Browser) -> anyhow::Result<Option<T>>,
    ) -> anyhow::Result<T> {
        let deadline = Instant::now() + timeout;
        let mut last_error = None;
        loop {
            match check(self).await {
                Ok(Some(value)) => return Ok(value),
                Ok(None) => {}
                Err(error) => last_error = Some(error),
            }
            if Instant::now() > deadline {
                let last_error = last_error
                    .map(|error| format!("\nlast error: {error:#}"))
                    .unwrap_or_default();
                bail!(
                    "timed out after {timeout:?} waiting for {what}{last_error}{}",
                    self.page_context().await
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The element matching `css` now (no waiting), with an error naming the
    /// selector and the page when there is none.
    pub async fn find(&self, css: &str) -> anyhow::Result<Element> {
        match self.client().find(Locator::Css(css)).await {
            Ok(element) => Ok(element),
            Err(error) => bail!(
                "no element matches `{css}` ({error}){}",
                self.page_context().await
            ),
        }
    }

    /// The visible text of the element matching `css`.
    pub async fn text(&self, css: &str) -> anyhow::Result<String> {
        self.find(css)
            .await?
            .text()
            .await
            .with_context(|| format!("cannot read the text of `{css}`"))
    }

    /// Attribute `name` of the element matching `css` (None when it has none).
    pub async fn attr(&self, css: &str, name: &str) -> anyhow::Result<Option<String>> {
        self.find(css)
            .await?
            .attr(name)
            .await
            .with_context(|| format!("cannot read attribute `{name}` of `{css}`"))
    }

    /// How many elements match `css` now.
    pub async fn count(&self, css: &str) -> anyhow::Result<usize> {
        Ok(self
            .client()
            .find_all(Locator::Css(css))
            .await
            .with_context(|| format!("cannot look for `{css}`"))?
            .len())
    }

    /// Clicks the element matching `css`.
    pub async fn click(&self, css: &str) -> anyhow::Result<()> {
        self.find(css)
            .await?
            .click()
            .await
            .with_context(|| format!("cannot click `{css}`"))
    }

    /// Saves a PNG of the viewport as `target/ui-screenshots/<name>.png` under
    /// the workspace root (the name reduced to `[a-z0-9_-]`) and returns its path.
    pub async fn screenshot(&self, name: &str) -> anyhow::Result<PathBuf> {
        let png = self
            .client()
            .screenshot()
            .await
            .with_context(|| format!("cannot take screenshot {name}"))?;
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join(format!("{}.png", sanitize(name)));
        std::fs::write(&path, png).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    }

    /// Ends the session (Chromium quits), then kills whatever is left of
    /// chromedriver's process group. Dropping the browser kills the group
    /// without the polite first step.
    pub async fn close(mut self) -> anyhow::Result<()> {
        let closed = match self.client.take() {
            Some(client) => tokio::time::timeout(SESSION_CLOSE, client.close()).await,
            None => Ok(Ok(())),
        };
        self.kill();
        match closed {
            Ok(result) => result.context("cannot close the WebDriver session"),
            Err(_) => bail!("the WebDriver session did not close within {SESSION_CLOSE:?}"),
        }
    }

    /// The page's URL and the start of its source, for errors (saying so when
    /// they cannot be read).
    async fn page_context(&self) -> String {
        let url = match tokio::time::timeout(PAGE_CONTEXT, self.url()).await {
            Ok(Ok(url)) => url,
            Ok(Err(error)) => format!("(unknown: {error:#})"),
            Err(_) => format!("(unknown: no answer within {PAGE_CONTEXT:?})"),
        };
        let source = match tokio::time::timeout(PAGE_CONTEXT, self.source()).await {
            Ok(Ok(source)) => source,
            Ok(Err(error)) => format!("(unreadable: {error:#})"),
            Err(_) => format!("(unreadable: no answer within {PAGE_CONTEXT:?})"),
        };
        let snippet: String = source.chars().take(SOURCE_SNIPPET).collect();
        let more = if snippet.len() < source.len() {
            "\n[...]"
        } else {
            ""
        };
        format!("\non page {url}; its source begins:\n{snippet}{more}")
    }

    /// SIGKILLs chromedriver's process group and reaps chromedriver, then
    /// kills any Chromium process that left the group (its command line names
    /// this browser's profile). Safe to call twice.
    fn kill(&mut self) {
        let Some(mut driver) = self.driver.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(driver.id()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = driver.kill();
        let _ = driver.wait();
        drop(self.watchdog_pipe.take());
        kill_processes_with_marker(&self.profile.path().to_string_lossy());
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The capabilities of a session in a headless Chromium that runs as root in a
/// container: no sandbox (it refuses to start as root with one), no GPU, shared
/// memory in /tmp (a container's /dev/shm is small), a fresh profile, and a
/// fixed window.
fn capabilities(chromium: &Path, user_data_dir: &Path) -> serde_json::Map<String, Value> {
    let args = [
        "--headless=new".to_string(),
        "--no-sandbox".to_string(),
        "--disable-gpu".to_string(),
        "--disable-dev-shm-usage".to_string(),
        format!("--user-data-dir={}", user_data_dir.display()),
        format!("--window-size={},{}", WINDOW.0, WINDOW.1),
    ];
    let mut capabilities = serde_json::Map::new();
    capabilities.insert("browserName".to_string(), json!("chrome"));
    // Bounded navigation and scripts: a page that never loads fails its `goto`
    // after 30 s instead of chromedriver's default 300 s.
    capabilities.insert(
        "timeouts".to_string(),
        json!({ "pageLoad": 30_000, "script": 30_000 }),
    );
    capabilities.insert(
        "goog:chromeOptions".to_string(),
        json!({ "binary": chromium, "args": args }),
    );
    capabilities
}

/// Whether chromedriver answers `GET /status` with `"ready": true`.
async fn driver_ready(port: u16) -> bool {
    let ask = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let request =
            format!("GET /status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        // chromedriver keeps the connection open whatever the request says, so
        // the answer is read until it says ready, not until the end of stream.
        let mut response = Vec::new();
        let mut buffer = [0u8; 4096];
        while response.len() < 65_536 {
            let read = stream.read(&mut buffer).await?;
            if read == 0 {
                break;
            }
            response.extend_from_slice(&buffer[..read]);
            let compact: String = String::from_utf8_lossy(&response)
                .split_whitespace()
                .collect();
            if compact.contains("\"ready\":true") {
                return std::io::Result::Ok(true);
            }
        }
        Ok(false)
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), ask).await,
        Ok(Ok(true))
    )
}

/// Where screenshots go: kept with the test output, outside any temporary folder.
fn screenshot_dir() -> PathBuf {
    workspace_root().join("target").join("ui-screenshots")
}

/// `name` lowercased, every character outside `[a-z0-9_-]` replaced by `_`.
fn sanitize(name: &str) -> String {
    let clean: String = name
        .chars()
        .flat_map(char::to_lowercase)
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.is_empty() {
        "screenshot".to_string()
    } else {
        clean
    }
}

/// The first executable file named `program` in the PATH's folders.
fn find_on_path(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// The page of the self-test: a heading now, a paragraph 300 ms later.
    const PAGE: &str = "<!doctype html><html><head><title>browser self-test</title></head>\
        <body><h1 id=\"title\" data-kind=\"heading\">Ferry</h1><script>\
        setTimeout(() => { const p = document.createElement('p'); p.id = 'late'; \
        p.textContent = 'added after 300 ms'; document.body.appendChild(p); }, 300);\
        </script></body></html>";

    /// A tiny HTTP/1.1 server on 127.0.0.1 that answers `/` with [`PAGE`] and
    /// anything else with 404, one connection at a time; stopped and joined
    /// when dropped.
    struct PageServer {
        address: SocketAddr,
        stop: Arc<AtomicBool>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl PageServer {
        fn start() -> PageServer {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind the page server");
            let address = listener.local_addr().expect("the page server's address");
            let stop = Arc::new(AtomicBool::new(false));
            let thread = std::thread::spawn({
                let stop = Arc::clone(&stop);
                move || {
                    for stream in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        if let Ok(stream) = stream {
                            serve(stream);
                        }
                    }
                }
            });
            PageServer {
                address,
                stop,
                thread: Some(thread),
            }
        }

        fn url(&self) -> String {
            format!("http://{}/", self.address)
        }
    }

    impl Drop for PageServer {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            // Wakes the accept loop up so that it sees the flag.
            let _ = std::net::TcpStream::connect(self.address);
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }

    /// Answers one request and closes the connection.
    fn serve(mut stream: std::net::TcpStream) {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let mut request = Vec::new();
        let mut buffer = [0u8; 1024];
        // A preconnected socket may never carry a request: the read timeout
        // bounds the wait, and at most 64 KiB of headers are read.
        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 65_536 {
            match stream.read(&mut buffer) {
                Ok(0) | Err(_) => return,
                Ok(n) => request.extend_from_slice(&buffer[..n]),
            }
        }
        let (status, body) = if request.starts_with(b"GET / ") {
            ("200 OK", PAGE)
        } else {
            ("404 Not Found", "not found")
        };
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(response.as_bytes());
    }

    /// Live processes in process group `group`.
    fn processes_in_group(group: u32) -> Vec<u32> {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|entry| {
                let pid: u32 = entry.file_name().to_string_lossy().parse().ok()?;
                let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
                // Fields after the command's closing parenthesis: state, ppid, pgrp.
                let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
                let state = fields.next()?;
                let pgrp: u32 = fields.nth(1)?.parse().ok()?;
                (pgrp == group && state != "Z").then_some(pid)
            })
            .collect()
    }

    /// Waits (bounded) until nothing of the browser's group or profile lives.
    fn assert_all_gone(group: u32, profile: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let in_group = processes_in_group(group);
            let with_profile = crate::processes_with_marker(profile);
            if in_group.is_empty() && with_profile == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "left behind: {in_group:?} in group {group}, {with_profile} with {profile}"
            );
            std::thread::sleep(POLL);
        }
    }

    #[test]
    fn names_are_reduced_to_safe_characters() {
        assert_eq!(
            sanitize("Runs page / after Retry!"),
            "runs_page___after_retry_"
        );
        assert_eq!(sanitize("t99-ui_runs"), "t99-ui_runs");
        assert_eq!(sanitize(""), "screenshot");
    }

    #[tokio::test]
    async fn a_page_loads_waits_for_a_late_element_and_is_screenshotted() {
        if !Browser::available() {
            return;
        }
        let server = PageServer::start();
        let started = Instant::now();
        let browser = Browser::start().await.expect("start the browser");
        let group = browser
            .driver
            .as_ref()
            .map(Child::id)
            .expect("chromedriver");
        let profile = browser.profile.path().to_string_lossy().into_owned();
        assert!(
            processes_in_group(group).len() > 1,
            "Chromium runs in chromedriver's group"
        );

        browser.goto(&server.url()).await.expect("open the page");
        assert_eq!(browser.text("#title").await.expect("title"), "Ferry");
        assert_eq!(
            browser.attr("#title", "data-kind").await.expect("attr"),
            Some("heading".to_string())
        );
        assert_eq!(browser.count("p").await.expect("count"), 0);
        let late = browser
            .wait_for("#late", Duration::from_secs(5))
            .await
            .expect("the late element");
        assert_eq!(late.text().await.expect("text"), "added after 300 ms");
        browser
            .wait_until_js(
                "document.querySelectorAll('p').length === 1",
                Duration::from_secs(5),
            )
            .await
            .expect("one paragraph");
        browser.click("#late").await.expect("click");
        assert!(
            browser
                .source()
                .await
                .expect("source")
                .contains("added after 300 ms")
        );

        let error = browser
            .wait_for("#never", Duration::from_millis(200))
            .await
            .expect_err("no such element");
        let message = format!("{error:#}");
        assert!(
            message.contains("`#never`")
                && message.contains(&server.url())
                && message.contains("<h1"),
            "{message}"
        );

        let path = browser
            .screenshot("Browser self-test")
            .await
            .expect("screenshot");
        assert_eq!(path, screenshot_dir().join("browser_self-test.png"));
        let png = std::fs::read(&path).expect("read the screenshot");
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG file");
        // The IHDR chunk: width and height, big-endian, at bytes 16..24.
        let width = u32::from_be_bytes(png[16..20].try_into().expect("width"));
        let height = u32::from_be_bytes(png[20..24].try_into().expect("height"));
        // The window is 1280x900; headless Chromium draws the viewport inside
        // it, less the height of the (invisible) browser controls.
        let viewport = browser
            .client()
            .execute(
                "return [window.innerWidth, window.innerHeight];",
                Vec::new(),
            )
            .await
            .expect("the viewport's size");
        assert_eq!(width, WINDOW.0, "the screenshot's width");
        assert_eq!(
            json!([width, height]),
            viewport,
            "the screenshot is the viewport"
        );

        browser.close().await.expect("close the browser");
        assert_all_gone(group, &profile);
        eprintln!("browser self-test took {:?}", started.elapsed());

        // Dropping without closing stops everything too.
        let browser = Browser::start().await.expect("start a second browser");
        let group = browser
            .driver
            .as_ref()
            .map(Child::id)
            .expect("chromedriver");
        let profile = browser.profile.path().to_string_lossy().into_owned();
        drop(browser);
        assert_all_gone(group, &profile);
    }
}
