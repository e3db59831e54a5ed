"""The client against a real ``ferry dev``: runs, logs, artifacts, metrics, errors."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
from pathlib import Path
from typing import List

import blake3
import pytest

import ferry


def test_yaml_iris_end_to_end(client: ferry.Client, dev, iris: Path, tmp_path: Path) -> None:
    run = client.submit(iris / "pipeline.yaml", params={"seed": 42})
    # Follow the logs live while the run runs, on another thread.
    followed: list = []
    follower = threading.Thread(target=lambda: followed.extend(run.logs(follow=True)))
    follower.start()
    status = run.wait(progress=True)
    follower.join(timeout=60)
    assert not follower.is_alive(), "logs(follow=True) did not end with the run"
    assert status.state == "succeeded"
    assert status.summary.steps_total == 15 and status.summary.steps_done == 15
    names = {s.name for s in status.steps}
    assert {"split", "standardize", "train.0", "train.11", "select"} <= names
    trial = next(s for s in status.steps if s.name == "train.0")
    assert trial.trial_of == "train" and trial.matrix == {"k": "15", "weights": "uniform"}
    assert trial.attempts and trial.attempts[0].exit_code == 0

    # Logs: the same lines as the CLI prints, with step, attempt, stream, time.
    lines = list(run.logs())
    assert lines and all(l.step and l.attempt >= 1 and l.stream in ("stdout", "stderr") for l in lines)
    assert all(l.timestamp_ms > 0 for l in lines)
    assert {l.text for l in followed} >= {l.text for l in lines if l.step == "select"}
    assert [l.text for l in run.logs(step="select")] == [l.text for l in lines if l.step == "select"]

    # Artifacts: every one downloaded and verified, equal to the CLI's download.
    artifacts = run.artifacts()
    assert {(a.step, a.name) for a in artifacts} >= {("select", "best.json"), ("split", "train.csv")}
    for artifact in artifacts:
        target = artifact.download(tmp_path / f"{artifact.step}-{artifact.name}")
        data = target.read_bytes()
        assert len(data) == artifact.size
        assert blake3.blake3(data).hexdigest() == artifact.digest
    best = json.loads((tmp_path / "select-best.json").read_text())
    cli = dev.ferry("artifacts", "get", str(run.id), "select", "best.json", "-o", str(tmp_path / "cli-best.json"))
    assert (tmp_path / "cli-best.json").read_bytes() == (tmp_path / "select-best.json").read_bytes(), cli.stdout
    assert "accuracy" in json.dumps(best)

    # Metrics: as records and as a DataFrame, every value.
    records = run.metrics()
    assert {r["name"] for r in records} >= {"accuracy", "macro_f1"}
    assert {r["step"] for r in records if r["name"] == "accuracy"} >= {f"train.{i}" for i in range(12)}
    frame = run.metrics_frame()
    assert len(frame) == len(records)
    assert list(frame.columns) == ["step", "attempt", "name", "value", "step_index"]
    assert frame[frame["name"] == "accuracy"]["value"].between(0, 1).all()

    # Listing: this run, with its parameters and last metrics, and a filter.
    listed = [r for r in client.runs(limit=0) if r.id == run.id]
    assert listed and listed[0].state == "succeeded" and listed[0].params["seed"] == "42"
    assert run.id in {r.id for r in client.runs(where="seed=42")}
    assert run.id not in {r.id for r in client.runs(where="seed=43")}

    # A second submission takes the data preparation from the cache.
    again = client.submit(iris, params={"seed": 42}).wait(progress=False)
    cached = {s.name for s in again.steps if s.reused == "cached"}
    assert {"split", "standardize"} <= cached, [(s.name, s.reused) for s in again.steps]
    assert again.bundle_digest == status.bundle_digest


def test_workers(client: ferry.Client) -> None:
    workers = client.workers()
    assert len(workers) == 1 and workers[0].connected and workers[0].cpus == 2.0
    assert workers[0].labels.get("mode") == "dev"


def test_a_failing_run_raises_run_failed_naming_the_step(client: ferry.Client, tmp_path: Path) -> None:
    (tmp_path / "pipeline.yaml").write_text(
        "name: fails\nsteps:\n  - name: ok\n    shell: \"true\"\n"
        "  - name: breaks\n    needs: [ok]\n    shell: \"echo going down >&2; exit 3\"\n"
    )
    run = client.submit(tmp_path)
    with pytest.raises(ferry.RunFailed) as raised:
        run.wait(progress=False)
    assert raised.value.state == "failed"
    assert "breaks" in str(raised.value) and "exit code 3" in str(raised.value)
    assert [s.name for s in raised.value.failed_steps] == ["breaks"]
    status = run.wait(progress=False, raise_on_failure=False)
    assert status.state == "failed"
    assert any(l.text == "going down" and l.stream == "stderr" for l in run.logs(step="breaks"))


def test_a_spec_error_names_file_line_and_column(client: ferry.Client, tmp_path: Path) -> None:
    (tmp_path / "pipeline.yaml").write_text(
        "name: bad\nsteps:\n  - name: a\n    shell: \"true\"\n    needs: [nowhere]\n"
    )
    with pytest.raises(ferry.SpecError) as raised:
        client.submit(tmp_path)
    error = raised.value
    assert error.file == "pipeline.yaml" and error.line == 5, str(error)
    assert error.column is not None and "nowhere" in str(error)


def test_unknown_run_is_not_found(client: ferry.Client) -> None:
    with pytest.raises(ferry.NotFound) as raised:
        client.run(999_999).status()
    assert "999999" in str(raised.value)


def test_an_unreachable_coordinator_is_unavailable_naming_it(dev) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = dev.config
    with ferry.Client(f"127.0.0.1:{port}", config=config, timeout=3) as client:
        with pytest.raises(ferry.Unavailable) as raised:
            client.runs()
    assert f"127.0.0.1:{port}" in str(raised.value)
    assert raised.value.addresses == [f"127.0.0.1:{port}"]


def test_failover_to_the_next_address(dev) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with ferry.Client([f"127.0.0.1:{port}", dev.address], config=dev.config, timeout=5) as client:
        assert isinstance(client.runs(), list)


def test_submit_many_answers_in_order_and_raises_the_first_refusal(dev, tmp_path: Path) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    (folder / "pipeline.yaml").write_text(
        'name: many\nparams:\n  n: 0\nsteps:\n  - name: s\n    command: ["echo", "n=${params.n}"]\n'
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # The first address answers nothing: the stream goes to the next.
    with ferry.Client([f"127.0.0.1:{port}", dev.address], config=dev.config, timeout=5) as client:
        runs = client.submit_many(folder, [{"n": i} for i in range(40)])
        assert len({run.id for run in runs}) == 40
        for i in (0, 17, 39):
            status = runs[i].wait(progress=False)
            assert status.state == "succeeded"
            assert [line.text for line in runs[i].logs()] == [f"n={i}"]
        with pytest.raises(ferry.SpecError) as raised:
            # (n values not run before: a run of n=3 would reuse the one above)
            client.submit_many(folder, [{"n": 101}, {"nope": 2}, {"n": 103}, {"other": 4}])
        error = raised.value
        assert error.index == 1, error
        assert "nope" in str(error), error
        started = list(error.submitted)
        assert started[1] is None and started[3] is None
        assert all(isinstance(run, ferry.Run) for run in (started[0], started[2]))
        assert [line.text for line in started[2].logs(follow=True)] == ["n=103"]


def test_a_bundle_gone_from_the_cluster_is_uploaded_again(
    client: ferry.Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The client believes the cluster holds these bundles (as after an upload
    # that `ferry gc` later collected); the coordinator refuses the
    # submissions, and the client uploads each bundle again and resends.
    uploads: List[str] = []
    real_upload = client._upload_bundle

    def counted(data: bytes, digest: str) -> str:
        uploads.append(digest)
        return real_upload(data, digest)

    monkeypatch.setattr(client, "_upload_bundle", counted)
    for way in ("submit", "submit_many"):
        folder = tmp_path / way
        folder.mkdir()
        (folder / "pipeline.yaml").write_text(f'name: gone\nsteps:\n  - name: s\n    command: ["echo", "{way}"]\n')
        digest = ferry.pack_dir(folder).digest
        client._stored.add(digest)
        if way == "submit":
            runs = [client.submit(folder, no_cache=True)]
        else:
            runs = client.submit_many(folder, [{}, {}], no_cache=True)
        for run in runs:
            status = run.wait(progress=False)
            assert status.state == "succeeded" and status.bundle_digest == digest
        assert [line.text for line in runs[0].logs()] == [way]
        # Once believed stored, once again after the refusal.
        assert uploads.count(digest) == 2, uploads


def test_a_certificate_from_another_ca_is_refused(dev, tmp_path: Path) -> None:
    from conftest import ferry_bin

    other = tmp_path / "other-ca"
    subprocess.run([str(ferry_bin()), "certs", "init", "--dir", str(other)], check=True, capture_output=True)
    subprocess.run([str(ferry_bin()), "certs", "issue", "--dir", str(other), "--role", "client", "--name", "mallory"],
                   check=True, capture_output=True)
    # The cluster's own CA to check the server by; a client identity it never issued.
    real_ca = ferry.ClientConfig.resolve(config=dev.config).ca
    with ferry.Client(dev.address, ca=real_ca, cert=other / "mallory.pem", key=other / "mallory-key.pem",
                      timeout=5) as client:
        with pytest.raises(ferry.PermissionDenied) as raised:
            client.runs()
    message = str(raised.value)
    assert dev.address in message and "certificate" in message, message


def test_missing_configuration_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("FERRY_CONFIG", "FERRY_COORDINATOR", "FERRY_CA", "FERRY_CERT", "FERRY_KEY", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ferry.ConfigError) as raised:
        ferry.Client()
    assert "ferry dev" in str(raised.value) and "FERRY_COORDINATOR" in str(raised.value)
    with pytest.raises(ferry.ConfigError, match="only TLS"):
        ferry.Client("http://127.0.0.1:1", ca="a", cert="b", key="c")


def test_a_folder_is_packed_again_when_a_file_changes(client: ferry.Client, tmp_path: Path, dev) -> None:
    folder = tmp_path / "changing"
    folder.mkdir()
    (folder / "pipeline.yaml").write_text("name: changing\nsteps:\n  - name: s\n    shell: \"cat note.txt\"\n")
    (folder / "note.txt").write_text("first\n")
    first = client.submit(folder).wait(progress=False)
    assert client.submit(folder).wait(progress=False).bundle_digest == first.bundle_digest
    (folder / "note.txt").write_text("second, longer\n")
    changed = client.submit(folder)
    status = changed.wait(progress=False)
    assert status.bundle_digest != first.bundle_digest
    assert status.bundle_digest == json.loads(dev.ferry("--output", "json", "bundle", str(folder)).stdout)["digest"]
    assert [line.text for line in changed.logs()] == ["second, longer"]
    runs = client.submit_many(folder, [{}, {}, {}])
    assert len({r.id for r in runs}) == 3
