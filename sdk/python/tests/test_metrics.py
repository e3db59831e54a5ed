"""Prometheus metrics of ``ferry dev --metrics-listen``: the text parses with
prometheus_client's OpenMetrics parser, and the counters move with a run."""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Dict

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

import ferry


def scrape(url: str) -> Dict[str, object]:
    """Every family at ``url``, by name (parsed strictly)."""
    with urllib.request.urlopen(url, timeout=10) as answer:
        assert answer.headers["Content-Type"].startswith("application/openmetrics-text"), answer.headers
        text = answer.read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(families: Dict[str, object], family: str, sample: str, **labels: str) -> float:
    """The sum of ``sample``'s values in ``family`` whose labels include ``labels``."""
    found = families.get(family)
    if found is None:
        return 0.0
    return sum(
        s.value for s in found.samples  # type: ignore[attr-defined]
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    )


def settle(client: ferry.Client) -> None:
    """Waits for every run of the session's cluster to end (earlier tests
    leave some going), so that counters move only with this test's work."""
    for summary in client.runs(limit=1000):
        if not summary.done:
            client.run(summary.id).wait(progress=False, raise_on_failure=False, timeout=120)


def test_metrics_parse_and_move_with_a_run(client: ferry.Client, dev, iris: Path) -> None:
    settle(client)
    before = scrape(dev.metrics_url)
    run = client.submit(iris, no_cache=True)
    status = run.wait(progress=False)
    assert status.state == "succeeded"
    with pytest.raises(ferry.NotFound):
        client.run(999_999).status()
    after = scrape(dev.metrics_url)

    types = {name: family.type for name, family in after.items()}  # type: ignore[attr-defined]
    assert types["ferry_grpc_requests"] == "counter"
    assert types["ferry_grpc_request_seconds"] == "histogram"
    assert types["ferry_raft_proposals"] == "counter"
    assert types["ferry_raft_proposal_seconds"] == "histogram"
    assert types["ferry_raft_term"] == "gauge"

    # One member: it leads, and its term and indexes are read at the scrape.
    assert value(after, "ferry_raft_role", "ferry_raft_role", role="leader") == 1
    assert value(after, "ferry_raft_role", "ferry_raft_role", role="follower") == 0
    assert value(after, "ferry_raft_term", "ferry_raft_term") >= 1
    applied = value(after, "ferry_raft_applied_index", "ferry_raft_applied_index")
    assert applied > value(before, "ferry_raft_applied_index", "ferry_raft_applied_index")
    assert value(after, "ferry_raft_commit_index", "ferry_raft_commit_index") >= applied

    # The submission and the refused read, each counted once with its code.
    def calls(families: Dict[str, object], method: str, code: str) -> float:
        return value(families, "ferry_grpc_requests", "ferry_grpc_requests_total",
                     service="Control", method=method, code=code)

    assert calls(after, "SubmitRun", "OK") == calls(before, "SubmitRun", "OK") + 1
    assert calls(after, "GetRun", "NotFound") == calls(before, "GetRun", "NotFound") + 1
    timed = value(after, "ferry_grpc_request_seconds", "ferry_grpc_request_seconds_count",
                  service="Control", method="SubmitRun", code="OK")
    assert timed == calls(after, "SubmitRun", "OK")

    # Read from the replicated state: the 15 steps of the run succeeded; each
    # was placed on the worker (nothing came from the cache).
    finished = value(after, "ferry_steps_finished", "ferry_steps_finished_total", outcome="succeeded") - value(
        before, "ferry_steps_finished", "ferry_steps_finished_total", outcome="succeeded")
    assert finished == len(status.steps) == 15, finished
    placed = value(after, "ferry_scheduler_placements", "ferry_scheduler_placements_total") - value(
        before, "ferry_scheduler_placements", "ferry_scheduler_placements_total")
    assert placed == 15, placed
    assert value(after, "ferry_scheduler_pass_seconds", "ferry_scheduler_pass_seconds_count") > 0

    # Its outputs were uploaded as artifacts into this member's store.
    uploads = value(after, "ferry_blob_uploads", "ferry_blob_uploads_total", kind="artifact") - value(
        before, "ferry_blob_uploads", "ferry_blob_uploads_total", kind="artifact")
    assert uploads >= 1, uploads
    assert value(after, "ferry_blob_upload_bytes", "ferry_blob_upload_bytes_total", kind="artifact") > 0
    assert value(after, "ferry_blob_stored", "ferry_blob_stored") >= value(before, "ferry_blob_stored", "ferry_blob_stored") + 1
    assert value(after, "ferry_blob_stored_bytes", "ferry_blob_stored_bytes") > 0
    assert types["ferry_blob_replication_seconds"] == "histogram"

    # The worker's side (ferry dev serves it on the same address): 15 process
    # attempts, their logs, and nothing held once they ended.
    started = value(after, "ferry_worker_attempts", "ferry_worker_attempts_total", runtime="process") - value(
        before, "ferry_worker_attempts", "ferry_worker_attempts_total", runtime="process")
    assert started == 15, started
    logged = value(after, "ferry_worker_log_bytes", "ferry_worker_log_bytes_total") - value(
        before, "ferry_worker_log_bytes", "ferry_worker_log_bytes_total")
    assert logged > 0
    assert value(after, "ferry_worker_cpu_millis", "ferry_worker_cpu_millis", state="capacity") == 2000
    assert value(after, "ferry_worker_memory_bytes", "ferry_worker_memory_bytes", state="capacity") == 2 << 30
    for family in ("ferry_worker_cpu_millis", "ferry_worker_memory_bytes", "ferry_worker_gpus"):
        assert value(after, family, family, state="in_use") == 0, family

    # The iris run's 15 steps each reported through a proposal (and more:
    # starts, placements), every one applied.
    proposals = value(after, "ferry_raft_proposals", "ferry_raft_proposals_total", result="applied") - value(
        before, "ferry_raft_proposals", "ferry_raft_proposals_total", result="applied")
    assert proposals >= 15, proposals
    observed = value(after, "ferry_raft_proposal_seconds", "ferry_raft_proposal_seconds_count") - value(
        before, "ferry_raft_proposal_seconds", "ferry_raft_proposal_seconds_count")
    assert observed >= proposals


def test_queued_steps_are_counted_by_project_and_priority(client: ferry.Client, dev, tmp_path: Path) -> None:
    folder = tmp_path / "queued"
    folder.mkdir()
    (folder / "pipeline.yaml").write_text('name: queued\nsteps:\n  - name: s\n    command: ["true"]\n')
    settle(client)
    worker = client.workers()[0].name
    dev.ferry("workers", "cordon", worker)
    try:
        run = client.submit(folder, no_cache=True)
        families = scrape(dev.metrics_url)
        assert families["ferry_scheduler_queued_steps"].type == "gauge"  # type: ignore[attr-defined]
        queued = value(families, "ferry_scheduler_queued_steps", "ferry_scheduler_queued_steps",
                       project="default", priority="0")
        assert queued >= 1, families["ferry_scheduler_queued_steps"]
    finally:
        dev.ferry("workers", "uncordon", worker)
    assert run.wait(progress=False).state == "succeeded"
    # Nothing queued any more: the class is no longer reported.
    later = scrape(dev.metrics_url)
    assert value(later, "ferry_scheduler_queued_steps", "ferry_scheduler_queued_steps",
                 project="default") == 0


def test_a_memory_kill_is_counted(client: ferry.Client, dev, tmp_path: Path) -> None:
    folder = tmp_path / "hungry"
    folder.mkdir()
    (folder / "pipeline.yaml").write_text(
        "name: hungry\nsteps:\n  - name: s\n"
        '    command: ["python3", "-c", "import time; b = bytearray(400 << 20); time.sleep(10)"]\n'
        "    resources: {cpu: 0.1, memory: 32Mi}\n"
    )
    settle(client)
    before = scrape(dev.metrics_url)
    status = client.submit(folder, no_cache=True).wait(progress=False, raise_on_failure=False)
    assert status.state == "failed", status
    after = scrape(dev.metrics_url)
    kills = value(after, "ferry_worker_memory_kills", "ferry_worker_memory_kills_total") - value(
        before, "ferry_worker_memory_kills", "ferry_worker_memory_kills_total")
    assert kills == 1, (kills, [step.reason for step in status.steps])


def test_only_metrics_is_served(dev) -> None:
    url = dev.metrics_url.replace("/metrics", "/other")
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(url, timeout=10)
    assert raised.value.code == 404
