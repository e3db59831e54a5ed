//! A Ferry cluster from Docker Compose (issue 17): the images are built here
//! with nothing pulled (deploy/docker/build.sh), `docker-compose up` brings up
//! three coordinators and two workers with certificates made by the one-shot
//! `certs` service, the iris example runs from the host's CLI, the leader's
//! container is killed mid-run and the run completes, a container step runs
//! through the host's engine from a worker in a container (the work directory
//! at the same path on both sides), and `down -v` leaves no container, volume
//! or network of the project behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use ferry_tests::{bin, bin_dir, free_port, wait_for};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(command: &mut Command) -> Output {
    let output = command.output().expect("start a command");
    assert!(
        output.status.success(),
        "{command:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// One Compose project, taken down (with its volumes) when dropped.
struct Project {
    name: String,
    certs: tempfile::TempDir,
    home: tempfile::TempDir,
    /// The workers' data, at the same path on the host and in the workers.
    work: tempfile::TempDir,
    ports: [u16; 3],
}

impl Project {
    fn compose(&self) -> Command {
        let mut command = Command::new("docker-compose");
        command
            .arg("-p")
            .arg(&self.name)
            .arg("-f")
            .arg(repo().join("deploy/docker/compose.yaml"))
            .env("FERRY_CERTS", self.certs.path())
            .env("FERRY_WORK", self.work.path())
            .env("FERRY_PORT_1", self.ports[0].to_string())
            .env("FERRY_PORT_2", self.ports[1].to_string())
            .env("FERRY_PORT_3", self.ports[2].to_string());
        command
    }

    /// The host's `ferry`, as the `alice` the certs service made.
    fn ferry(&self, args: &[&str]) -> Output {
        let certs = self.certs.path();
        let addresses: Vec<String> = self
            .ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        Command::new(bin("ferry"))
            .args(args)
            .env("HOME", self.home.path())
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("FERRY_CONFIG")
            .env("FERRY_COORDINATOR", addresses.join(","))
            .env("FERRY_CA", certs.join("ca.pem"))
            .env("FERRY_CERT", certs.join("alice.pem"))
            .env("FERRY_KEY", certs.join("alice-key.pem"))
            .output()
            .expect("run ferry")
    }

    fn json(&self, args: &[&str]) -> Option<Value> {
        let output = self.ferry(args);
        output.status.success().then_some(())?;
        serde_json::from_slice(&output.stdout).ok()
    }

    /// Ids of what the project left, by kind.
    fn leftovers(&self) -> Vec<String> {
        let label = format!("label=com.docker.compose.project={}", self.name);
        let mut left = Vec::new();
        for kind in [
            &["ps", "-a", "-q"][..],
            &["volume", "ls", "-q"][..],
            &["network", "ls", "-q"][..],
        ] {
            let output = run(Command::new("docker").args(kind).args(["--filter", &label]));
            left.extend(
                String::from_utf8_lossy(&output.stdout)
                    .lines()
                    .map(|id| format!("{} {id}", kind[0])),
            );
        }
        left
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = self
            .compose()
            .args(["down", "-v", "--remove-orphans", "--timeout", "5"])
            .output();
    }
}

#[test]
fn a_compose_cluster_runs_iris_through_the_loss_of_its_leader_and_leaves_nothing() {
    // The images, from the binaries this build made; the base image from
    // Debian packages the first time.
    run(Command::new(repo().join("deploy/docker/build.sh"))
        .arg("debug")
        .env("FERRY_BIN_DIR", bin_dir()));

    let project = Project {
        name: format!("ferrytest{}", std::process::id()),
        certs: tempfile::tempdir().expect("certs directory"),
        home: tempfile::tempdir().expect("home directory"),
        work: tempfile::tempdir().expect("work directory"),
        ports: [free_port(), free_port(), free_port()],
    };
    run(project.compose().args(["up", "-d"]));

    let workers = wait_for(Duration::from_secs(90), "two workers connected", || {
        let workers = project.json(&["workers", "--output", "json"])?;
        let connected = workers
            .as_array()?
            .iter()
            .filter(|w| w["connected"] == true)
            .count();
        (connected == 2).then_some(workers)
    });
    assert_eq!(workers.as_array().map(Vec::len), Some(2), "{workers}");

    let submitted = project.ferry(&[
        "run",
        repo().join("examples/iris").to_str().expect("utf-8 path"),
    ]);
    assert!(submitted.status.success(), "{submitted:?}");
    let run_id =
        ferry_tests::parse_run_id(&String::from_utf8_lossy(&submitted.stdout)).expect("a run id");

    // Kill the leader's container while the run goes on.
    let leader = wait_for(Duration::from_secs(30), "a leader", || {
        let status = project.json(&["cluster", "status", "--output", "json"])?;
        status["leader_id"].as_u64().filter(|id| *id != 0)
    });
    let container = run(project
        .compose()
        .args(["ps", "-q", &format!("coordinator-{leader}")]));
    let container = String::from_utf8_lossy(&container.stdout)
        .trim()
        .to_string();
    assert!(!container.is_empty(), "no container for member {leader}");
    run(Command::new("docker").args(["kill", &container]));

    let state = wait_for(Duration::from_secs(180), "the run to finish", || {
        let run = project.json(&["status", &run_id.to_string(), "--output", "json"])?;
        let state = run["state"].as_str()?.to_string();
        (state != "running" && state != "queued").then_some(state)
    });
    assert_eq!(state, "succeeded", "the run survives the leader's loss");
    let select = project.json(&["artifacts", &run_id.to_string(), "--output", "json"]);
    assert!(select.is_some(), "its artifacts are listed");

    // A container step from a worker in a container: the host's engine runs
    // it in the locally built base image, on the work directory the worker
    // made (the same path on both sides), with the input a process step made.
    let dir = project.work.path().join("boxed-pipeline");
    std::fs::create_dir_all(&dir).expect("pipeline directory");
    std::fs::write(
        dir.join("pipeline.yaml"),
        "name: boxed\nsteps:\n  - name: make\n    shell: \"echo made-by-a-process > data.txt\"\n    outputs: [data.txt]\n  - name: boxed\n    image: ferry/base:bookworm\n    image_pull: never\n    inputs: {d: make/data.txt}\n    command: [python3, -c, \"import os; open('out.txt', 'w').write(open(os.environ['FERRY_INPUT_D']).read().strip() + ' then a container as ' + str(os.getuid()))\"]\n    outputs: [out.txt]\n",
    )
    .expect("pipeline");
    let submitted = project.ferry(&["run", dir.to_str().expect("utf-8 path")]);
    assert!(submitted.status.success(), "{submitted:?}");
    let boxed =
        ferry_tests::parse_run_id(&String::from_utf8_lossy(&submitted.stdout)).expect("a run id");
    let state = wait_for(Duration::from_secs(120), "the container run", || {
        let run = project.json(&["status", &boxed.to_string(), "--output", "json"])?;
        let state = run["state"].as_str()?.to_string();
        (state != "running" && state != "queued").then_some(run)
    });
    assert_eq!(state["state"], "succeeded", "{state:#}");
    let out = project.work.path().join("out.txt");
    let got = project.ferry(&[
        "artifacts",
        "get",
        &boxed.to_string(),
        "boxed",
        "out.txt",
        "-o",
        out.to_str().expect("utf-8 path"),
    ]);
    assert!(got.status.success(), "{got:?}");
    assert_eq!(
        std::fs::read_to_string(&out).expect("out.txt"),
        "made-by-a-process then a container as 65534"
    );

    // Torn down, nothing of the project is left, nor any step container of
    // its workers.
    run(project
        .compose()
        .args(["down", "-v", "--remove-orphans", "--timeout", "5"]));
    assert_eq!(project.leftovers(), Vec::<String>::new());
    for worker in ["worker-1", "worker-2"] {
        let label = format!("label=ferry.worker={worker}");
        let left = run(Command::new("docker").args(["ps", "-a", "-q", "--filter", &label]));
        assert!(
            String::from_utf8_lossy(&left.stdout).trim().is_empty(),
            "{worker} left step containers"
        );
    }
}
