//! The systemd units of deploy/systemd (issue 17): each one passes
//! `systemd-analyze verify` with no warning (an unknown or misspelt key is only
//! a warning to systemd, and would silently drop a hardening option), starts
//! the binary this build made, and keeps the hardening the README promises.

use std::process::Command;

use ferry_tests::bin;

fn unit_text(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/systemd")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Verifies unit `name` with its binary pointed at this build's.
fn verify(name: &str, binary: &str) {
    let text = unit_text(name);
    let installed = format!("/usr/local/bin/{binary}");
    assert!(text.contains(&installed), "{name} starts {installed}");
    let built = bin(binary);
    let dir = tempfile::tempdir().expect("temporary directory");
    let unit = dir.path().join(name);
    std::fs::write(
        &unit,
        text.replace(&installed, &built.display().to_string()),
    )
    .expect("write the unit");
    let output = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze (package systemd; tests/run-all.sh installs it)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify {name}: {:?}\n{stderr}",
        output.status
    );
}

/// The lines of `name` that set `key`.
fn settings(name: &str, key: &str) -> Vec<String> {
    unit_text(name)
        .lines()
        .filter_map(|line| line.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_coordinator_unit_verifies_and_runs_unprivileged_and_confined() {
    let name = "ferry-coordinator.service";
    verify(name, "ferry-coordinator");
    assert_eq!(settings(name, "User"), ["ferry"]);
    assert_eq!(settings(name, "NoNewPrivileges"), ["yes"]);
    assert_eq!(settings(name, "CapabilityBoundingSet"), [""]);
    assert_eq!(settings(name, "ProtectSystem"), ["strict"]);
    assert_eq!(
        settings(name, "ReadWritePaths"),
        ["/var/lib/ferry/coordinator"]
    );
    assert_eq!(settings(name, "UMask"), ["0077"]);
    // Longer than the daemon's own 8 s stop deadline.
    assert_eq!(settings(name, "TimeoutStopSec"), ["15s"]);
}

#[test]
fn the_worker_unit_verifies_and_holds_only_what_containing_steps_needs() {
    let name = "ferry-worker.service";
    verify(name, "ferry-worker");
    assert_eq!(settings(name, "NoNewPrivileges"), ["yes"]);
    assert_eq!(settings(name, "Delegate"), ["yes"]);
    assert_eq!(settings(name, "KillMode"), ["mixed"]);
    let caps = settings(name, "CapabilityBoundingSet").join(" ");
    let mut caps: Vec<&str> = caps.split_whitespace().collect();
    caps.sort_unstable();
    assert_eq!(
        caps,
        [
            "CAP_CHOWN",
            "CAP_DAC_OVERRIDE",
            "CAP_FOWNER",
            "CAP_KILL",
            "CAP_SETGID",
            "CAP_SETUID"
        ]
    );
    assert_eq!(settings(name, "ProtectSystem"), ["full"]);
}
