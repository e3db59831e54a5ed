//! `ferry ui` against a `ferry dev` cluster, in a real headless Chromium over
//! WebDriver, and over plain HTTP for what a browser would not send (a forged
//! POST, a foreign Host). Screenshots of each page go to
//! target/ui-screenshots/.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use ferry_tests::browser::Browser;
use ferry_tests::dev::{FerryProcess, run_ferry, start_dev};
use ferry_tests::{parse_run_id, workspace_root, write_pipeline};

const WAIT: Duration = Duration::from_secs(60);

/// Prints slowly on both streams, with markup in a line and a parameter.
const SLOW: &str = r#"name: ui-slow
params:
  note: "<script>window.__pwned = 1</script>"
steps:
  - name: talk
    shell: |
      for i in $(seq 1 12); do echo "line $i"; echo "warn $i" >&2; sleep 0.4; done
      echo '<script>window.__pwned = 2</script>'
      for s in 1 2 3 4 5; do echo "{\"name\": \"loss\", \"value\": 0.$s, \"step\": $s}" >> "$FERRY_METRICS"; done
      echo '{"name": "<script>window.__pwned = 3</script>", "value": 1}' >> "$FERRY_METRICS"
  - name: after
    needs: [talk]
    shell: "echo done"
"#;

const SLEEPY: &str = "name: ui-sleepy
steps:
  - name: nap
    shell: \"sleep 120\"
";

/// One HTTP/1.1 exchange with the UI: status, headers (lowercase names) and
/// body. What a browser would never send (a forged POST, another Host) is
/// sent this way.
fn http(
    address: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut stream = TcpStream::connect(address).expect("connect to ferry ui");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut request = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("Host: {address}\r\n"));
    }
    for (key, value) in headers {
        request.push_str(&format!("{key}: {value}\r\n"));
    }
    if method == "POST" {
        request.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).expect("send");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read the answer");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header block");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        body = unchunk(&body);
    }
    (status, headers, body)
}

fn unchunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = data.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&data[..end]).trim(), 16)
            .expect("a chunk size");
        if size == 0 {
            break;
        }
        out.extend_from_slice(&data[end + 2..end + 2 + size]);
        data = &data[end + 2 + size + 2..];
    }
    out
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn run_state(home: &Path, run: u64) -> String {
    let status = run_ferry(
        home,
        home,
        &["status", &run.to_string(), "--output", "json"],
    );
    assert!(status.success(), "{status:?}");
    status.json()["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn submit(home: &Path, pipeline: &Path, extra: &[&str]) -> u64 {
    let mut args = vec!["run", pipeline.to_str().expect("utf-8 path")];
    args.extend_from_slice(extra);
    let result = run_ferry(home, home, &args);
    assert!(result.success(), "ferry run: {result:?}");
    parse_run_id(&result.stdout).expect("a run id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_shows_runs_live_and_acts_only_with_its_token() {
    if !Browser::available() {
        return;
    }
    let home_dir = tempfile::tempdir().expect("temp dir");
    let home = home_dir.path();
    let mut dev = start_dev(home, &["--data-dir", "dev-data"]);
    dev.wait_line("client config written", WAIT);
    dev.wait_line("coordinator listening on", WAIT);
    let mut ui = FerryProcess::start(home, "ui", &["ui", "--listen", "127.0.0.1:0"]);
    let banner = ui.wait_line("ferry ui: http://", WAIT);
    assert!(banner.contains("acting as dev-user"), "{banner}");
    let address = banner
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("an address")
        .to_string();
    let base = format!("http://{address}");

    // Beyond loopback only when asked, and then only under the names given.
    let refused = run_ferry(home, home, &["ui", "--listen", "0.0.0.0:0"]);
    assert!(
        !refused.success() && refused.stderr.contains("--expose"),
        "{refused:?}"
    );
    let unnamed = run_ferry(home, home, &["ui", "--listen", "0.0.0.0:0", "--expose"]);
    assert!(
        !unnamed.success() && unnamed.stderr.contains("--allow-host"),
        "{unnamed:?}"
    );

    // The iris example, to its end.
    let iris = workspace_root().join("examples/iris");
    let iris_run = submit(home, &iris, &["--watch"]);
    let browser = Browser::start().await.expect("start the browser");

    // Runs: the run is listed.
    browser.goto(&format!("{base}/runs")).await.unwrap();
    browser
        .wait_for(&format!("#runs tr[data-run=\"{iris_run}\"]"), WAIT)
        .await
        .unwrap();
    let row = browser
        .text(&format!("#runs tr[data-run=\"{iris_run}\"]"))
        .await
        .unwrap();
    assert!(row.contains("iris") && row.contains("succeeded"), "{row}");
    browser.screenshot("runs").await.unwrap();

    // A run: the DAG with every step succeeded (the 12 trials in one box).
    browser
        .goto(&format!("{base}/runs/{iris_run}"))
        .await
        .unwrap();
    browser.wait_for("#dag svg g.node", WAIT).await.unwrap();
    assert_eq!(browser.count("#dag g.node").await.unwrap(), 4);
    assert_eq!(
        browser
            .count("#dag g.node[data-state=\"succeeded\"]")
            .await
            .unwrap(),
        4
    );
    assert_eq!(browser.count("#steps tr[data-step]").await.unwrap(), 15);
    let states: Vec<String> = browser
        .client()
        .execute(
            "return Array.from(document.querySelectorAll('#steps tr[data-step] .state')).map(e => e.textContent)",
            vec![],
        )
        .await
        .unwrap()
        .as_array()
        .expect("a list")
        .iter()
        .map(|v| v.as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(states.len(), 15);
    assert!(states.iter().all(|s| s == "succeeded"), "{states:?}");
    let train = browser
        .text("#dag g.node[data-step=\"train\"]")
        .await
        .unwrap();
    assert!(train.contains("12 trials: 12 succeeded"), "{train}");
    browser.screenshot("run-dag").await.unwrap();

    // A step: its outputs with digests and a download verified by the server.
    browser
        .goto(&format!("{base}/runs/{iris_run}/steps/select"))
        .await
        .unwrap();
    browser.wait_for("#outputs a.download", WAIT).await.unwrap();
    browser.screenshot("step").await.unwrap();
    let (status, headers, body) = http(
        &address,
        "GET",
        &format!("/runs/{iris_run}/download?step=select&name=best.json"),
        &[],
        "",
    );
    assert_eq!(status, 200);
    let digest = header(&headers, "x-ferry-digest").expect("a digest header");
    assert_eq!(blake3::hash(&body).to_hex().as_str(), digest);
    let listed = run_ferry(
        home,
        home,
        &["artifacts", &iris_run.to_string(), "--output", "json"],
    );
    assert!(listed.stdout.contains(digest), "{listed:?}");
    // An input, by its digest: to the run and step that wrote it.
    let scaler = listed
        .json()
        .as_array()
        .expect("artifacts")
        .iter()
        .find(|a| a["name"] == "scaler.json")
        .and_then(|a| a["digest"].as_str().map(str::to_string))
        .expect("standardize's scaler.json");
    let (status, headers, _) = http(&address, "GET", &format!("/artifacts/{scaler}"), &[], "");
    assert_eq!(status, 303);
    let location = header(&headers, "location").expect("a redirect");
    assert!(location.contains("step=standardize"), "{location}");
    let (status, _, body) = http(&address, "GET", location, &[], "");
    assert_eq!(status, 200);
    assert_eq!(blake3::hash(&body).to_hex().as_str(), scaler);

    // Metrics: one point per value reported.
    browser
        .goto(&format!("{base}/runs/{iris_run}/metrics"))
        .await
        .unwrap();
    browser.wait_for("section.chart svg", WAIT).await.unwrap();
    let reported = run_ferry(
        home,
        home,
        &["metrics", &iris_run.to_string(), "--output", "json"],
    );
    let values: usize = reported
        .json()
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["metrics"].as_array().map_or(0, Vec::len))
        .sum();
    assert!(values >= 24, "{reported:?}");
    assert_eq!(
        browser.count("section.chart svg circle").await.unwrap(),
        values
    );
    assert!(browser.count("section.chart .best").await.unwrap() >= 1);
    browser.screenshot("metrics").await.unwrap();

    // A live log: lines arrive while the step runs; the DAG follows the run.
    let slow_dir = home.join("slow");
    let slow = write_pipeline(&slow_dir, SLOW, &[]);
    let slow_run = submit(home, &slow, &[]);
    browser
        .goto(&format!("{base}/runs/{slow_run}"))
        .await
        .unwrap();
    browser
        .wait_for(
            "#dag g.node[data-step=\"talk\"][data-state=\"running\"]",
            WAIT,
        )
        .await
        .unwrap();
    browser
        .goto(&format!("{base}/runs/{slow_run}/steps/talk/log"))
        .await
        .unwrap();
    browser
        .wait_until_js("document.querySelectorAll('#log span').length >= 4", WAIT)
        .await
        .unwrap();
    let early = browser.count("#log span").await.unwrap();
    let ended_early = browser.attr("#log", "data-ended").await.unwrap();
    assert!(
        ended_early.is_none() && early < 25,
        "the log should still be following: {early} lines, ended {ended_early:?}"
    );
    browser.screenshot("log-following").await.unwrap();
    browser
        .wait_until_js(
            &format!("document.querySelectorAll('#log span').length > {early}"),
            WAIT,
        )
        .await
        .unwrap();
    browser
        .wait_for("#log[data-ended=\"true\"]", WAIT)
        .await
        .unwrap();
    assert_eq!(browser.count("#log span").await.unwrap(), 25);
    assert_eq!(browser.text("#step-state").await.unwrap(), "succeeded");
    assert_eq!(browser.count("#log span.stderr").await.unwrap(), 12);
    let log_text = browser.text("#log").await.unwrap();
    assert!(
        log_text.contains("<script>window.__pwned = 2</script>"),
        "{log_text}"
    );
    browser.screenshot("log-ended").await.unwrap();
    let (status, _, text) = http(
        &address,
        "GET",
        &format!("/runs/{slow_run}/steps/talk/log.txt"),
        &[],
        "",
    );
    assert_eq!(status, 200);
    let text = String::from_utf8_lossy(&text);
    assert_eq!(text.lines().count(), 25, "{text}");
    assert!(text.contains("[1 stderr] warn 12"), "{text}");
    // The run page, opened before the run ended, followed it to the end.
    browser
        .goto(&format!("{base}/runs/{slow_run}"))
        .await
        .unwrap();
    browser
        .wait_until_js(
            "document.getElementById('run-state').textContent === 'succeeded'",
            WAIT,
        )
        .await
        .unwrap();
    // Markup from users shows as text: a parameter, a log line.
    let pwned = browser
        .client()
        .execute("return typeof window.__pwned", vec![])
        .await
        .unwrap();
    assert_eq!(pwned, serde_json::json!("undefined"));
    let params = browser.text("table.params").await.unwrap();
    assert!(
        params.contains("<script>window.__pwned = 1</script>"),
        "{params}"
    );
    let (_, _, html) = http(&address, "GET", &format!("/runs/{slow_run}"), &[], "");
    let html = String::from_utf8_lossy(&html);
    assert!(!html.contains("<script>window"), "unescaped markup");
    assert!(html.contains("&lt;script&gt;window.__pwned = 1&lt;"));
    let (_, _, log_html) = http(
        &address,
        "GET",
        &format!("/runs/{slow_run}/steps/talk/log"),
        &[],
        "",
    );
    let log_html = String::from_utf8_lossy(&log_html);
    assert!(!log_html.contains("<script>window"), "unescaped log line");
    // The metrics page of the slow run: the five loss values.
    browser
        .goto(&format!("{base}/runs/{slow_run}/metrics"))
        .await
        .unwrap();
    browser.wait_for("section.chart", WAIT).await.unwrap();
    assert_eq!(
        browser
            .count("section.chart[data-metric=\"loss\"] svg circle")
            .await
            .unwrap(),
        5
    );
    // A metric named with markup: a chart titled with it, as text.
    assert_eq!(browser.count("section.chart").await.unwrap(), 2);
    let headings = browser.text("main").await.unwrap();
    assert!(
        headings.contains("<script>window.__pwned = 3</script>"),
        "{headings}"
    );
    let pwned = browser
        .client()
        .execute("return typeof window.__pwned", vec![])
        .await
        .unwrap();
    assert_eq!(pwned, serde_json::json!("undefined"));

    // Cancel: refused without the token (and from another origin), done from
    // the page.
    let sleepy = write_pipeline(&home.join("sleepy"), SLEEPY, &[]);
    let sleepy_run = submit(home, &sleepy, &[]);
    let (status, _, body) = http(
        &address,
        "POST",
        &format!("/runs/{sleepy_run}/cancel"),
        &[],
        "",
    );
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("CSRF"));
    let (status, _, _) = http(
        &address,
        "POST",
        &format!("/runs/{sleepy_run}/cancel"),
        &[("Origin", "http://evil.example")],
        "csrf=guess",
    );
    assert_eq!(status, 403);
    let (status, _, _) = http(&address, "GET", "/runs", &[("Host", "evil.example")], "");
    assert_eq!(status, 403, "a foreign Host is refused");
    assert_eq!(run_state(home, sleepy_run), "running");
    browser
        .goto(&format!("{base}/runs/{sleepy_run}"))
        .await
        .unwrap();
    browser.wait_for("#cancel", WAIT).await.unwrap();
    browser.screenshot("run-running").await.unwrap();
    browser.click("#cancel").await.unwrap();
    browser
        .wait_until_js(
            "document.getElementById('run-state').textContent === 'cancelled'",
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(run_state(home, sleepy_run), "cancelled");
    browser.screenshot("run-cancelled").await.unwrap();

    // Re-run from the page: a new run, shown.
    browser
        .goto(&format!("{base}/runs/{slow_run}"))
        .await
        .unwrap();
    browser
        .client()
        .execute(
            "document.querySelector('#rerun-form select').value = 'talk'",
            vec![],
        )
        .await
        .unwrap();
    browser.click("#rerun").await.unwrap();
    browser
        .wait_until_js(
            &format!("document.getElementById('run') && document.getElementById('run').dataset.run !== '{slow_run}'"),
            WAIT,
        )
        .await
        .unwrap();

    // The operator's pages.
    for (page, css) in [
        ("workers", "#workers tr[data-worker]"),
        ("cluster", "#members tr[data-member]"),
        ("schedules", "#schedules"),
    ] {
        browser.goto(&format!("{base}/{page}")).await.unwrap();
        browser.wait_for(css, WAIT).await.unwrap();
        browser.screenshot(page).await.unwrap();
    }
    let lineage_digest = digest.to_string();
    browser
        .goto(&format!("{base}/lineage/{lineage_digest}"))
        .await
        .unwrap();
    browser.wait_for("#lineage svg g.node", WAIT).await.unwrap();
    assert!(
        browser
            .count("#lineage g.node[data-state=\"step\"]")
            .await
            .unwrap()
            >= 3
    );
    browser.screenshot("lineage").await.unwrap();
    // Compare two runs.
    browser
        .goto(&format!("{base}/compare?run={iris_run}&run={slow_run}"))
        .await
        .unwrap();
    browser.wait_for("#comparison", WAIT).await.unwrap();
    browser.screenshot("compare").await.unwrap();

    browser.close().await.unwrap();
    ui.terminate();
    dev.terminate();
}
