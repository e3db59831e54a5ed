//! The whole authorization matrix against a real cluster (issue 16): every RPC
//! of the control service, and the agent service's calls decided per caller,
//! called over gRPC as a viewer of project `p`, an editor of `p`, the owner of
//! another project `q`, an administrator, a worker certificate and a
//! coordinator certificate. What each cell must answer is computed from the
//! authorization table itself (`access::decide` on the caller's relation to
//! the fixture): allowed calls are not refused for permission, refused ones are
//! `PermissionDenied` naming the role they need (or the service's role gate,
//! for a certificate of another role), and a refusal changes nothing an
//! administrator can read.

mod calls;
mod cases;
mod fingerprint;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use ferry_common::pki::TlsFiles;
use ferry_common::proto::{self, agent_client::AgentClient, control_client::ControlClient};
use ferry_coordinator_core::access::TABLE;
use ferry_tests::{Cluster, bin, workspace_root};
use tonic::transport::Channel;
use tonic::{Code, Status};

use calls::{
    Answer, Ctx, Fixtures, MAKE_SPEC, WAIT_SPEC, chunks, schedule_request, secret_request, submit,
};
use cases::{Caller, Case, Expected, Placement, Service, expected, expected_listed, placement};
use fingerprint::{difference, fingerprint};

const OWNER: &str = "p-owner";
const EDITOR: &str = "p-editor";
const VIEWER: &str = "p-viewer";
const OTHER_OWNER: &str = "q-owner";
const ADMIN: &str = "root";
/// The worker certificate of the matrix: registered nowhere, running nothing.
const WORKER: &str = "w2";

/// The certificate a coordinator presents: the one member's (`member-ID`).
fn coordinator_certificate(cluster: &Cluster) -> String {
    format!("member-{}", cluster.coordinators[0].id)
}

fn certificate_of(cluster: &Cluster, caller: Caller) -> String {
    match caller {
        Caller::Viewer => VIEWER.to_string(),
        Caller::Editor => EDITOR.to_string(),
        Caller::OtherOwner => OTHER_OWNER.to_string(),
        Caller::Admin => ADMIN.to_string(),
        Caller::Worker => WORKER.to_string(),
        Caller::Coordinator => coordinator_certificate(cluster),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Runtime::new().expect("tokio runtime")
}

fn channel(cluster: &Cluster, name: &str) -> Channel {
    let tls = TlsFiles {
        ca: cluster.pki.ca(),
        cert: cluster.pki.cert(name),
        key: cluster.pki.key(name),
    }
    .load()
    .expect("TLS files");
    ferry_common::channel::endpoint(&cluster.address(), &tls)
        .expect("endpoint")
        .connect_lazy()
}

/// Polls `check` every 100 ms until it gives a value, at most `timeout`.
async fn until<T>(timeout: Duration, what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn run_view(client: &mut ControlClient<Channel>, run: u64) -> proto::RunView {
    let request = proto::GetRunRequest {
        run_id: run,
        ..Default::default()
    };
    client.get_run(request).await.expect("get run").into_inner()
}

/// Projects `p` (owner, editor, viewer) and `q` (its owner); in `p`: a
/// finished run with an artifact, a run running on `w1` (then cordoned, so
/// that every later run stays queued and the state holds still), a schedule,
/// a pin and a secret.
async fn make_fixtures(cluster: &Cluster) -> Fixtures {
    let mut admin = ControlClient::new(channel(cluster, ADMIN));
    let mut owner = ControlClient::new(channel(cluster, OWNER));
    for (project, project_owner) in [("p", OWNER), ("q", OTHER_OWNER)] {
        let request = proto::CreateProjectRequest {
            name: project.to_string(),
            owner: project_owner.to_string(),
        };
        admin.create_project(request).await.expect("create project");
    }
    for (user, role) in [(EDITOR, "editor"), (VIEWER, "viewer")] {
        let request = proto::SetProjectMemberRequest {
            project: "p".to_string(),
            user: user.to_string(),
            role: role.to_string(),
        };
        owner.set_project_member(request).await.expect("add member");
    }
    let code = cluster.path("code");
    std::fs::create_dir_all(&code).expect("code dir");
    std::fs::write(code.join("README"), "the matrix's code\n").expect("code file");
    let packed = ferry_common::bundle::pack_dir(&code).expect("pack");
    let uploaded = owner
        .upload_bundle(futures::stream::iter(chunks(&packed.bytes)))
        .await
        .expect("upload bundle")
        .into_inner();
    let bundle = uploaded.digest;
    let done_run = submit(&mut owner, MAKE_SPEC, &bundle)
        .await
        .expect("submit");
    until(
        Duration::from_secs(60),
        "the make run to succeed",
        async || {
            let view = run_view(&mut owner, done_run).await;
            let state = view.summary.expect("summary").state;
            assert!(state != "failed", "the make run failed: {state}");
            (state == "succeeded").then_some(())
        },
    )
    .await;
    let artifacts = owner
        .list_artifacts(proto::ListArtifactsRequest {
            run_id: done_run,
            stale: false,
        })
        .await
        .expect("artifacts")
        .into_inner();
    let artifact = artifacts.artifacts[0].digest.clone();
    let running_run = submit(&mut owner, WAIT_SPEC, &bundle)
        .await
        .expect("submit");
    let running_attempt = until(
        Duration::from_secs(60),
        "the wait step to run",
        async || {
            let view = run_view(&mut owner, running_run).await;
            let step = &view.steps[0];
            (step.state == "running").then_some(step.attempt)
        },
    )
    .await;
    let cordon = proto::SetWorkerModeRequest {
        name: "w1".to_string(),
        mode: "cordoned".to_string(),
    };
    admin.set_worker_mode(cordon).await.expect("cordon w1");
    let schedule = "yearly".to_string();
    owner
        .create_schedule(schedule_request(&schedule, &bundle))
        .await
        .expect("schedule");
    let pin = "model".to_string();
    let request = proto::PinArtifactRequest {
        digest: artifact.clone(),
        tag: pin.clone(),
    };
    owner.pin_artifact(request).await.expect("pin");
    let secret = "token".to_string();
    owner
        .set_secret(secret_request(&secret, "first"))
        .await
        .expect("secret");
    Fixtures {
        bundle,
        bundle_size: uploaded.size,
        bundle_bytes: packed.bytes,
        done_run,
        artifact,
        running_run,
        running_attempt,
        schedule,
        pin,
        secret,
    }
}

/// The RPC names of `service` in proto/ferry/v1/ferry.proto.
fn proto_rpcs(service: Service) -> BTreeSet<String> {
    let text = std::fs::read_to_string(workspace_root().join("proto/ferry/v1/ferry.proto"))
        .expect("ferry.proto");
    let start = text
        .find(&format!("service {} {{", service.name()))
        .expect("the service in ferry.proto");
    let body = &text[start..start + text[start..].find("\n}").expect("its end")];
    body.lines()
        .filter_map(|line| line.trim().strip_prefix("rpc "))
        .map(|rest| rest.split('(').next().expect("a name").trim().to_string())
        .collect()
}

/// Whether an allowed call may fail for this stated reason (it was designed to
/// change nothing, or the thing is not there).
fn allowed_failure(case: Case) -> &'static [Code] {
    match case {
        // Member id 0 is invalid; member 99 does not exist.
        Case::AddMember => &[Code::InvalidArgument],
        Case::RemoveMember => &[Code::NotFound, Code::InvalidArgument],
        _ => &[],
    }
}

/// One cell: what the table says, what the call answered, and what is wrong.
struct Cell {
    expected: Expected,
    answer: String,
    problem: Option<String>,
}

/// A cell in a word: what the table says.
fn short(case: Case, caller: Caller, expected: &Expected) -> &'static str {
    match expected {
        Expected::Allowed if expected_listed(case, caller) == Some(false) => "ok-hidden",
        Expected::Allowed if case.must_change_nothing() => "ok-fenced",
        Expected::Allowed => "ok",
        Expected::Refused(_) => "DENY",
        Expected::Gate => "gate",
    }
}

fn judge(
    case: Case,
    caller: Caller,
    expected: &Expected,
    result: &Result<Answer, Status>,
) -> Option<String> {
    match (expected, result) {
        (Expected::Gate, Err(status)) => (status.code() != Code::PermissionDenied
            || !status.message().contains(case.service().gate_refusal()))
        .then(|| format!("expected the role gate's PermissionDenied, got {status:?}")),
        (Expected::Refused(needed), Err(status)) => (status.code() != Code::PermissionDenied
            || !status.message().contains(needed.as_str()))
        .then(|| format!("expected PermissionDenied naming {needed:?}, got {status:?}")),
        (Expected::Gate | Expected::Refused(_), Ok(answer)) => {
            Some(format!("expected a refusal, got an answer ({answer:?})"))
        }
        (Expected::Allowed, Err(status)) => (!allowed_failure(case).contains(&status.code()))
            .then(|| format!("allowed by the table, refused: {status:?}")),
        (Expected::Allowed, Ok(answer)) => {
            let listed = expected_listed(case, caller);
            if answer.listed != listed {
                return Some(format!(
                    "the listing shows the fixture: {:?}, the table says {listed:?}",
                    answer.listed
                ));
            }
            (case.must_change_nothing() && answer.accepted != Some(false))
                .then(|| format!("a report about another worker's attempt was taken: {answer:?}"))
        }
    }
}

fn table(cells: &BTreeMap<(usize, Caller), Cell>) -> String {
    let mut out = format!("{:<46}", "RPC");
    for caller in Caller::ALL {
        out.push_str(&format!("{:>11}", caller.label()));
    }
    out.push('\n');
    for (index, case) in Case::ALL.iter().enumerate() {
        let variant = format!("{case:?}");
        let label = if variant == case.rpc() {
            format!("{}.{}", case.service().name(), case.rpc())
        } else {
            format!("{}.{} [{variant}]", case.service().name(), case.rpc())
        };
        out.push_str(&format!("{label:<46}"));
        for caller in Caller::ALL {
            let cell = &cells[&(index, caller)];
            let mark = if cell.problem.is_some() { "!" } else { "" };
            let word = short(*case, caller, &cell.expected);
            out.push_str(&format!("{:>11}", format!("{mark}{word}")));
        }
        out.push('\n');
    }
    out.push_str(
        "(ok: allowed; ok-hidden: a listing without the fixture; ok-fenced: a report the \
         state machine ignores; DENY: refused by the table; gate: refused by the service's \
         role gate; !: the call answered otherwise)\n",
    );
    for ((index, caller), cell) in cells {
        if let Some(problem) = &cell.problem {
            out.push_str(&format!(
                "! {:?} as {}: {problem} [answered: {}]\n",
                Case::ALL[*index],
                caller.label(),
                cell.answer
            ));
        }
    }
    out
}

async fn matrix(cluster: &Cluster, fixtures: Fixtures) -> BTreeMap<(usize, Caller), Cell> {
    let mut control = BTreeMap::new();
    let mut agent = BTreeMap::new();
    for caller in Caller::ALL {
        let channel = channel(cluster, &certificate_of(cluster, caller));
        control.insert(caller, ControlClient::new(channel.clone()));
        agent.insert(caller, AgentClient::new(channel));
    }
    let mut admin = ControlClient::new(channel(cluster, ADMIN));
    let owner = ControlClient::new(channel(cluster, OWNER));
    let mut ctx = Ctx::new(control, agent, owner, fixtures);
    let mut cells = BTreeMap::new();
    for (index, case) in Case::ALL.into_iter().enumerate() {
        // Refused callers first: an allowed call may change the fixture.
        let mut callers = Caller::ALL;
        callers.sort_by_key(|caller| expected(case, *caller) == Expected::Allowed);
        for caller in callers {
            let expected = expected(case, caller);
            let fresh = ctx.prepare(case, caller).await.expect("a fresh fixture");
            let compare = expected != Expected::Allowed || case.must_change_nothing();
            let before = if compare {
                Some(fingerprint(&mut admin).await.expect("fingerprint"))
            } else {
                None
            };
            let result = ctx.call(case, caller, fresh).await;
            let mut problem = judge(case, caller, &expected, &result);
            if let Some(before) = before {
                let after = fingerprint(&mut admin).await.expect("fingerprint");
                if before != after {
                    let changed = format!("the state changed: {}", difference(&before, &after));
                    problem = Some(problem.map_or(changed.clone(), |p| format!("{p}; {changed}")));
                }
            }
            let answer = match &result {
                Ok(answer) => format!("ok {answer:?}"),
                Err(status) => format!("{:?}: {}", status.code(), status.message()),
            };
            cells.insert(
                (index, caller),
                Cell {
                    expected,
                    answer,
                    problem,
                },
            );
        }
    }
    cells
}

#[test]
fn every_rpc_answers_every_caller_as_the_access_table_says_and_a_refusal_changes_nothing() {
    // The matrix covers every RPC of both services and places every action.
    for service in [Service::Control, Service::Agent] {
        let covered: BTreeSet<String> = Case::ALL
            .iter()
            .filter(|case| case.service() == service)
            .map(|case| case.rpc())
            .collect();
        assert_eq!(
            covered,
            proto_rpcs(service),
            "the {} RPCs of the matrix",
            service.name()
        );
    }
    for rule in TABLE {
        let exercised = Case::ALL.iter().any(|case| {
            case.actions().contains(&rule.action) || case.listed() == Some(rule.action)
        });
        match placement(rule.action) {
            Placement::Matrix => assert!(exercised, "no case of the matrix asks {:?}", rule.action),
            Placement::Internal(why) => {
                assert!(
                    !exercised,
                    "{:?} is placed outside the matrix ({why})",
                    rule.action
                )
            }
        }
    }

    let rt = runtime();
    let keys = tempfile::tempdir().expect("temp dir");
    let key = keys.path().join("secrets.key");
    let made = std::process::Command::new(bin("ferry"))
        .args(["certs", "secrets-key"])
        .arg(&key)
        .output()
        .expect("ferry certs secrets-key");
    assert!(made.status.success(), "{made:?}");
    let extra = format!(
        "admins = [\"{ADMIN}\"]\nsecrets_key = \"{}\"\n",
        key.display()
    );
    let mut cluster = Cluster::start_replicated(1, &extra);
    for name in [OWNER, EDITOR, VIEWER, OTHER_OWNER, ADMIN] {
        cluster
            .pki
            .issue("client", name)
            .expect("client certificate");
    }
    cluster
        .pki
        .issue("worker", WORKER)
        .expect("worker certificate");
    cluster.add_worker("w1", "cpus = 2\nmemory = \"2Gi\"");
    let started = Instant::now();
    let fixtures = rt.block_on(make_fixtures(&cluster));
    let (running_bundle, bundle_size) = (fixtures.bundle.clone(), fixtures.bundle_size);
    let cells = rt.block_on(matrix(&cluster, fixtures));
    let table = table(&cells);
    assert!(
        cells.values().all(|cell| cell.problem.is_none()),
        "the matrix differs from the access table:\n{table}"
    );

    // The allowed side of the blob row: w1 downloads the bundle of the attempt
    // it runs (the matrix's worker, with nothing assigned, was refused it).
    rt.block_on(async {
        let mut w1 = AgentClient::new(channel(&cluster, "w1"));
        let request = proto::BlobRef {
            digest: running_bundle,
            size: bundle_size,
        };
        let mut stream = w1
            .fetch_blob(request)
            .await
            .expect("w1 fetches its bundle")
            .into_inner();
        let mut bytes = 0;
        while let Some(chunk) = stream.message().await.expect("a chunk") {
            bytes += chunk.data.len() as u64;
        }
        assert_eq!(bytes, bundle_size, "w1 received its whole bundle");
    });
    eprintln!("the matrix took {:?}:\n{table}", started.elapsed());
}
