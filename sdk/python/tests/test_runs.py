"""Re-runs, lineage, comparisons, schedules and cancelling from Python."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

import ferry

sys.path.insert(0, str(Path(__file__).parent / "flows"))
import numberflow as flow  # noqa: E402


def _write(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pipeline.yaml").write_text(text)
    return folder


SCORED = """name: scored
params:
  v: 0.5
steps:
  - name: report
    shell: "echo '{\\"name\\": \\"acc\\", \\"value\\": ${params.v}}' >> \\"$FERRY_METRICS\\""
    cache: false
"""


def test_compare_ranks_runs_by_a_metric(client: ferry.Client, tmp_path: Path) -> None:
    folder = _write(tmp_path / "scored", SCORED)
    low = client.submit(folder, params={"v": 0.3})
    high = client.submit(folder, params={"v": 0.9})
    for run in (low, high):
        run.wait(progress=False)
    comparison = client.compare([low, high], metric="acc")
    assert comparison.best == high.id and comparison.params == ["v"]
    assert [r["run"] for r in comparison.runs] == [high.id, low.id]
    assert comparison.runs[0]["metrics"]["acc"] == 0.9 and comparison.runs[0]["best"]
    assert client.compare([low, high], metric="acc", goal="min").best == low.id
    frame = comparison.frame()
    assert list(frame["run"]) == [high.id, low.id] and list(frame["acc"]) == [0.9, 0.3]
    with pytest.raises(ferry.InvalidRequest, match="goal"):
        client.compare([low], metric="acc", goal="up")


def test_rerun_from_a_step_and_lineage(client: ferry.Client) -> None:
    first = client.submit(flow.numbers, params={"count": 4})
    first.wait(progress=False)
    again = client.rerun(first, from_step="score")
    status = again.wait(progress=False)
    by_name = {s.name: s for s in status.steps}
    assert by_name["make"].reused == "reused" and by_name["make"].reused_from == f"{first.id}/make"
    assert all(not by_name[f"score.{i}"].reused for i in range(3))

    artifact = next(a for a in again.artifacts() if a.step == "score.1" and a.name == "score.txt")
    nodes = client.lineage(artifact.digest)
    assert nodes[0].digest == artifact.digest and nodes[0].step == "score.1" and nodes[0].matrix == {"power": "2"}
    assert nodes[0].command[:4] == ["python3", "-m", "ferry.run", "numberflow:score"]
    made = [n for n in nodes[1:] if n.step == "make"]
    assert made and made[0].name == "numbers.txt" and made[0].run_id == first.id
    with pytest.raises(ferry.FerryError):
        client.lineage("0" * 64)


def test_schedules(client: ferry.Client, tmp_path: Path) -> None:
    folder = _write(tmp_path / "scored", SCORED)
    created = client.create_schedule("nightly-py", folder, cron="0 2 * * *", params={"v": 0.1})
    assert created.name == "nightly-py" and not created.paused and created.params == {"v": "0.1"}
    assert created.next_tick_ms > 0
    assert "nightly-py" in {s.name for s in client.schedules()}
    assert client.pause_schedule("nightly-py").paused
    assert not client.resume_schedule("nightly-py").paused
    with pytest.raises(ferry.FerryError, match="cron"):
        client.create_schedule("broken", folder, cron="every day")
    assert "broken" not in {s.name for s in client.schedules()}
    client.delete_schedule("nightly-py")
    assert "nightly-py" not in {s.name for s in client.schedules()}
    with pytest.raises(ferry.NotFound):
        client.delete_schedule("nightly-py")


def test_cancel(client: ferry.Client, tmp_path: Path) -> None:
    folder = _write(tmp_path / "slow", "name: slow\nsteps:\n  - name: wait\n    shell: \"sleep 60\"\n    cache: false\n")
    run = client.submit(folder)
    deadline = time.monotonic() + 60
    while run.status().steps[0].state != "running":
        assert time.monotonic() < deadline, "the step never started"
        time.sleep(0.2)
    summary = run.cancel()
    assert summary.id == run.id
    with pytest.raises(ferry.RunFailed) as raised:
        run.wait(progress=False, timeout=60)
    assert raised.value.state == "cancelled"
