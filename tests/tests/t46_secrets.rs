//! Secrets: set with `ferry secrets set`, delivered to a step as an environment
//! variable and as a private file, masked in its logs, absent from every file
//! of every coordinator and of the worker, and a new version reaches the next
//! attempt (with `cache.secrets: true`, the new version is a new cache key).

use std::path::Path;
use std::time::Duration;

use ferry_tests::{Cluster, bin, write_pipeline};

const PIPELINE: &str = "name: secrets\nsteps:\n  - name: show\n    cache: {secrets: true}\n    secrets:\n      - {name: hf_token, env: HF_TOKEN}\n      - {name: hf_token, file: hf_token}\n    shell: |\n      echo raw=$HF_TOKEN\n      echo rev=$(printf %s \"$HF_TOKEN\" | rev)\n      echo filerev=$(rev < \"$FERRY_SECRETS_DIR/hf_token\")\n      echo mode=$(stat -c %a \"$FERRY_SECRETS_DIR/hf_token\") dirmode=$(stat -c %a \"$FERRY_SECRETS_DIR\")\n      echo dir=$FERRY_SECRETS_DIR\n";

const UNKNOWN: &str = "name: unknown\nsteps:\n  - name: a\n    shell: echo hi\n    secrets: [{name: nope, env: NOPE}]\n";

/// A long random value (hex), unlikely anywhere by chance.
fn random_value() -> String {
    let mut bytes = [0u8; 32];
    let mut urandom = std::fs::File::open("/dev/urandom").expect("/dev/urandom");
    std::io::Read::read_exact(&mut urandom, &mut bytes).expect("random bytes");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every regular file under `root` whose bytes contain `needle`.
fn files_containing(root: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file()
                && let Ok(bytes) = std::fs::read(&path)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

fn line_value(logs: &str, prefix: &str) -> String {
    logs.lines()
        .find_map(|l| l.split_once(prefix).map(|(_, v)| v.trim().to_string()))
        .unwrap_or_else(|| panic!("no {prefix} line in the logs:\n{logs}"))
}

fn reversed(value: &str) -> String {
    value.chars().rev().collect()
}

#[test]
fn secrets_reach_the_step_and_nowhere_else() {
    let keys = tempfile::tempdir().expect("temp dir");
    let key = keys.path().join("secrets.key");
    let made = std::process::Command::new(bin("ferry"))
        .args(["certs", "secrets-key"])
        .arg(&key)
        .output()
        .expect("ferry certs secrets-key");
    assert!(made.status.success(), "{made:?}");
    let extra = format!("secrets_key = \"{}\"\n", key.display());
    let mut cluster = Cluster::start_replicated(3, &extra);
    cluster.add_worker("w1", "");
    let pipeline = write_pipeline(&cluster.path("p"), PIPELINE, &[]);

    // A bad name is refused with the rule; a step asking for a secret its
    // project lacks is refused at submission.
    let bad = cluster.ferry(&["secrets", "set", "Bad Name", "--from-env", "PATH"]);
    assert!(
        !bad.success() && bad.stderr.contains("is invalid"),
        "{bad:?}"
    );
    let unknown = write_pipeline(&cluster.path("u"), UNKNOWN, &[]);
    let refused = cluster.ferry(&["run", unknown.to_str().unwrap()]);
    assert!(
        !refused.success() && refused.stderr.contains("\"nope\""),
        "{refused:?}"
    );

    let values = tempfile::tempdir().expect("temp dir");
    let mut seen = Vec::new();
    for version in 1..=2u64 {
        let value = random_value();
        let file = values.path().join("value");
        std::fs::write(&file, &value).unwrap();
        let set = cluster.ferry(&[
            "secrets",
            "set",
            "hf_token",
            "--project",
            "default",
            "--from-file",
            file.to_str().unwrap(),
        ]);
        assert!(set.success(), "{set:?}");
        assert!(
            set.stdout.contains(&format!("version {version}")),
            "{set:?}"
        );
        std::fs::remove_file(&file).unwrap();

        let run = cluster.submit(&pipeline, &[]);
        let status = cluster.wait_run(run, Duration::from_secs(60));
        assert_eq!(status["state"], "succeeded", "{status}");
        let logs = cluster.ferry(&["logs", &run.to_string(), "show"]);
        assert!(logs.success(), "{logs:?}");
        assert!(!logs.stdout.contains(&value), "{}", logs.stdout);
        assert_eq!(line_value(&logs.stdout, "raw="), "***");
        // The step saw this version's value, in its environment and its file.
        assert_eq!(line_value(&logs.stdout, "rev="), reversed(&value));
        assert_eq!(line_value(&logs.stdout, "filerev="), reversed(&value));
        assert!(
            logs.stdout.contains("mode=400 dirmode=700"),
            "{}",
            logs.stdout
        );
        let dir = line_value(&logs.stdout, "dir=");
        assert!(!Path::new(&dir).exists(), "{dir} removed after the attempt");
        let json = cluster.ferry(&["status", &run.to_string(), "--output", "json"]);
        assert!(json.success(), "{json:?}");
        assert!(!json.stdout.contains(&value));
        seen.push(value);
    }

    let list = cluster.ferry(&["secrets", "list", "--output", "json"]);
    assert!(list.success(), "{list:?}");
    let listed = list.json();
    let entry = &listed.as_array().expect("a list")[0];
    assert_eq!(
        (&entry["name"], &entry["version"], &entry["project"]),
        (&"hf_token".into(), &2.into(), &"default".into()),
        "{listed}"
    );
    let text = cluster.ferry(&["secrets", "list"]);
    // The audit log records each setting of it, never the value.
    let audit = cluster.ferry(&["audit", "--output", "json"]);
    assert!(audit.success(), "{audit:?}");
    let sets = audit
        .json()
        .as_array()
        .expect("a list")
        .iter()
        .filter(|r| r["action"] == "set-secret" && r["outcome"] == "accepted")
        .count();
    assert_eq!(sets, 2, "{audit:?}");
    for value in &seen {
        assert!(!list.stdout.contains(value.as_str()) && !text.stdout.contains(value.as_str()));
        assert!(!audit.stdout.contains(value.as_str()), "{}", audit.stdout);
    }

    // Not in any byte of any coordinator's or the worker's files (data
    // directories, Raft logs, snapshots, blobs, daemon logs).
    for value in &seen {
        let found = files_containing(&cluster.path(""), value.as_bytes());
        assert!(found.is_empty(), "the value is in {found:?}");
    }

    // Deleting it: listed no more, and a new run asking for it is refused.
    let delete = cluster.ferry(&["secrets", "delete", "hf_token", "--project", "default"]);
    assert!(delete.success(), "{delete:?}");
    let again = cluster.ferry(&["run", pipeline.to_str().unwrap()]);
    assert!(
        !again.success() && again.stderr.contains("hf_token"),
        "{again:?}"
    );
}
