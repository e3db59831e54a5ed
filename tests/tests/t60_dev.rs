//! `ferry dev`: a one-process cluster that writes its own certificates and a client
//! config, so that a plain `ferry run` works with no flags and no environment; and
//! the messages a user gets when nothing is configured or nothing is listening.

use std::time::{Duration, Instant};

use ferry_tests::dev::{run_ferry, start_dev};
use ferry_tests::{Pki, free_port, parse_run_id, write_pipeline};

const TWO_STEPS: &str = "name: dev-smoke
steps:
  - name: make
    shell: \"echo hello from dev > greeting.txt\"
    outputs: [greeting.txt]
  - name: check
    inputs:
      greeting: make/greeting.txt
    shell: \"grep -q 'hello from dev' \\\"$FERRY_INPUT_GREETING\\\" && echo checked\"
";

#[test]
fn ferry_dev_runs_a_pipeline_with_no_flags_and_stops_on_sigterm() {
    let home_dir = tempfile::tempdir().expect("temp dir");
    let home = home_dir.path();
    let data = home.join("dev-data");
    let mut dev = start_dev(home, &["--data-dir", data.to_str().expect("utf-8 path")]);

    let written = dev.wait_line("client config written", Duration::from_secs(30));
    let config_path = home.join(".config/ferry/config.toml");
    assert!(
        written.contains(&config_path.display().to_string()),
        "{written}"
    );
    let listening = dev.wait_line("coordinator listening on", Duration::from_secs(1));
    let address = listening
        .split_whitespace()
        .find(|word| word.starts_with("127.0.0.1:"))
        .unwrap_or_else(|| panic!("no address in {listening:?}"))
        .to_string();
    assert_ne!(address, "127.0.0.1:0", "the port was not picked");
    let config = std::fs::read_to_string(&config_path).expect("client config");
    assert!(
        config.contains(&format!("coordinator = \"{address}\"")),
        "{config}"
    );

    // Certificates for every member, in the data directory (0700); the CA's
    // private key is gone once they are issued, so that no step can mint one.
    let certs = data.join("certs");
    for file in [
        "ca.pem",
        "member-1.pem",
        "member-1-key.pem",
        "dev-user.pem",
        "dev-user-key.pem",
    ] {
        assert!(certs.join(file).is_file(), "{file} missing in {certs:?}");
    }
    assert!(
        !certs.join("ca-key.pem").exists(),
        "the CA key is left in {certs:?}"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        for dir in [&data, &certs] {
            let mode = std::fs::metadata(dir)
                .expect("data dir")
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o700, "{dir:?}");
        }
    }

    // A plain `ferry run --watch`: no flags, no FERRY_* variables.
    let work = home.join("project");
    let pipeline = write_pipeline(&work, TWO_STEPS, &[]);
    let result = run_ferry(home, &work, &["run", "pipeline.yaml", "--watch"]);
    assert!(
        result.success(),
        "ferry run --watch failed: {result:?}\nferry dev stderr:\n{}",
        std::fs::read_to_string(&dev.log).unwrap_or_default()
    );
    assert!(pipeline.exists());
    let run = parse_run_id(&result.stdout).expect("run id");
    assert!(
        result.stdout.contains(&format!("run {run} succeeded")),
        "{result:?}"
    );

    let runs = run_ferry(home, home, &["runs", "--output", "json"]);
    assert!(runs.success(), "{runs:?}");
    let runs = runs.json();
    let list = runs.as_array().expect("a JSON list");
    assert_eq!(list.len(), 1, "{runs:#}");
    assert_eq!(list[0]["run"], run);
    assert_eq!(list[0]["pipeline"], "dev-smoke");
    assert_eq!(list[0]["state"], "succeeded");
    assert_eq!(list[0]["submitter"], "dev-user");

    let logs = run_ferry(home, home, &["logs", &run.to_string(), "check"]);
    assert!(
        logs.success() && logs.stdout.contains("checked"),
        "{logs:?}"
    );

    // The worker offers exactly the capacity asked for.
    let workers = run_ferry(home, home, &["workers", "--output", "json"]);
    assert!(workers.success(), "{workers:?}");
    let workers = workers.json();
    assert_eq!(workers[0]["capacity"]["cpu_millis"], 2000, "{workers:#}");
    assert_eq!(
        workers[0]["capacity"]["memory_bytes"],
        2u64 << 30,
        "{workers:#}"
    );
    assert_eq!(workers[0]["labels"]["mode"], "dev", "{workers:#}");

    let status = dev.terminate();
    assert!(status.success(), "ferry dev exited with {status}");
    let stderr = std::fs::read_to_string(&dev.log).unwrap_or_default();
    assert!(stderr.contains("ferry dev: stopping"), "{stderr}");
}

#[test]
fn ferry_dev_keeps_its_data_under_home_by_default() {
    let home_dir = tempfile::tempdir().expect("temp dir");
    let home = home_dir.path();
    let mut dev = start_dev(home, &[]);
    let listening = dev.wait_line("coordinator listening on", Duration::from_secs(30));
    let default = home.join(".local/share/ferry/dev");
    assert!(
        listening.contains(&format!("data in {}", default.display())),
        "{listening}"
    );
    dev.wait_line("client config written", Duration::from_secs(30));
    assert!(
        default.join("certs/ca.pem").is_file(),
        "no CA in {default:?}"
    );
    assert!(default.join("coordinator").is_dir(), "no coordinator data");
    assert!(home.join(".config/ferry/config.toml").is_file());

    // The cluster answers a plain `ferry` command.
    let runs = run_ferry(home, home, &["runs", "--output", "json"]);
    assert!(runs.success(), "{runs:?}");
    assert_eq!(runs.json(), serde_json::json!([]));
    // Its user administers it: a membership change passes the administrator
    // check (and is then refused for what it asks: there is no member 7).
    let remove = run_ferry(home, home, &["cluster", "remove-member", "--id", "7"]);
    assert!(!remove.success(), "{remove:?}");
    assert!(
        remove.stderr.contains("member 7 is not in the cluster"),
        "{remove:?}"
    );

    let status = dev.terminate();
    assert!(status.success(), "ferry dev exited with {status}");
}

#[test]
fn without_configuration_or_coordinator_the_client_says_what_to_do() {
    let home_dir = tempfile::tempdir().expect("temp dir");
    let home = home_dir.path();

    let result = run_ferry(home, home, &["runs"]);
    assert!(!result.success(), "{result:?}");
    assert!(
        result.stderr.contains("no coordinator is configured")
            && result.stderr.contains("--coordinator")
            && result.stderr.contains("'ferry dev'"),
        "{result:?}"
    );

    // Valid certificates, but nothing listens at the address.
    let pki = Pki::new(&home.join("certs")).expect("CA");
    pki.issue("client", "alice").expect("client cert");
    let address = format!("127.0.0.1:{}", free_port());
    let started = Instant::now();
    let result = run_ferry(
        home,
        home,
        &[
            "runs",
            "--coordinator",
            &address,
            "--ca",
            pki.ca().to_str().expect("utf-8 path"),
            "--cert",
            pki.cert("alice").to_str().expect("utf-8 path"),
            "--key",
            pki.key("alice").to_str().expect("utf-8 path"),
        ],
    );
    assert!(!result.success(), "{result:?}");
    assert!(
        result
            .stderr
            .contains(&format!("cannot reach the coordinator at {address}")),
        "{result:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
}

/// A client config for another cluster is moved aside, not overwritten; a config
/// `ferry dev` wrote itself is simply replaced on the next start.
#[test]
fn ferry_dev_keeps_a_foreign_client_config_as_a_backup() {
    let home_dir = tempfile::tempdir().expect("temp dir");
    let home = home_dir.path();
    let config = home.join(".config/ferry/config.toml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    let foreign = "coordinator = \"prod.example:7443\"\n";
    std::fs::write(&config, foreign).unwrap();
    let data = home.join("dev-data");
    let data_arg = data.to_str().unwrap().to_string();
    let extra = ["--data-dir", data_arg.as_str()];
    let mut dev = start_dev(home, &extra);
    let moved = dev.wait_line("previous client config was moved", Duration::from_secs(30));
    let backup = home.join(".config/ferry/config.toml.bak");
    assert!(moved.contains(backup.to_str().unwrap()), "{moved}");
    dev.wait_line("client config written", Duration::from_secs(30));
    assert_eq!(std::fs::read_to_string(&backup).unwrap(), foreign);
    assert!(
        std::fs::read_to_string(&config)
            .unwrap()
            .contains("127.0.0.1:")
    );
    assert!(dev.terminate().success());

    // Restarting replaces its own config and leaves the backup alone.
    let mut again = start_dev(home, &extra);
    let line = again.wait_line("client config written", Duration::from_secs(30));
    assert!(line.contains("client config written"), "{line}");
    assert_eq!(std::fs::read_to_string(&backup).unwrap(), foreign);
    assert!(again.terminate().success());
}

/// `ferry dev --config PATH` (or `FERRY_CONFIG`) writes the client
/// configuration there, and leaves the default path alone.
#[test]
fn ferry_dev_writes_the_client_config_where_it_is_told() {
    let home_dir = tempfile::tempdir().expect("temp dir");
    let home = home_dir.path();
    let config = home.join("elsewhere/ferry.toml");
    let config_arg = config.to_str().expect("utf-8 path");
    let mut dev = start_dev(home, &["--config", config_arg]);
    let written = dev.wait_line("client config written", Duration::from_secs(30));
    assert!(written.contains(&config.display().to_string()), "{written}");
    assert!(config.is_file());
    assert!(!home.join(".config/ferry/config.toml").exists());
    let runs = run_ferry(
        home,
        home,
        &["--config", config_arg, "runs", "--output", "json"],
    );
    assert!(runs.success(), "{runs:?}");
    let status = dev.terminate();
    assert!(status.success(), "ferry dev exited with {status}");
}
