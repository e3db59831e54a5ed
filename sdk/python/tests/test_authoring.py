"""Pipelines authored in Python: compiled to the spec, validated by the
coordinator, run by `python -m ferry.run` on a real worker."""

from __future__ import annotations

import sys
from pathlib import Path

import json

import pytest
import yaml

import ferry

sys.path.insert(0, str(Path(__file__).parent / "flows"))
import numberflow as flow  # noqa: E402  (tests/flows/numberflow.py)


def test_compile_gives_the_spec() -> None:
    spec = yaml.safe_load(ferry.compile(flow.numbers))
    assert spec["name"] == "numbers" and spec["params"] == {"count": 10, "scale": 1.0}
    make, score = spec["steps"]
    assert make["command"] == ["python3", "-m", "ferry.run", "numberflow:make", "count=${params.count}"]
    assert make["outputs"] == ["numbers.txt"] and make["resources"] == {"cpu": 0.25, "memory": "128Mi"}
    assert score["inputs"] == {"numbers": "make/numbers.txt"}
    assert score["matrix"] == {"power": [1, 2, 3]} and score["max_parallel"] == 2 and score["retries"] == 1
    assert score["command"][4:] == ["power=${matrix.power}", "scale=${params.scale}", "label=run"]


def test_a_python_pipeline_runs_end_to_end_and_is_cached_the_second_time(client: ferry.Client, tmp_path: Path) -> None:
    run = client.submit(flow.numbers, params={"count": 5, "scale": 2})
    status = run.wait(progress=False)
    assert status.state == "succeeded", status
    totals = {s.matrix["power"]: s.metrics["total"] for s in status.steps if s.trial_of == "score"}
    values = range(5)
    assert totals == {str(p): 2.0 * sum(v**p for v in values) for p in (1, 2, 3)}
    frame = run.metrics_frame()
    curve = frame[(frame["name"] == "term") & (frame["step"] == "score.2")]
    assert list(curve["step_index"]) == [0, 1, 2, 3, 4]
    logs = [line.text for line in run.logs()]
    assert any(text.startswith("power 3: total") for text in logs), logs
    artifact = next(a for a in run.artifacts() if a.step == "score.0")
    assert artifact.download(tmp_path / "score.txt").read_text().startswith("run ")
    again = client.submit(flow.numbers, params={"count": 5, "scale": 2}).wait(progress=False)
    assert all(s.reused == "cached" for s in again.steps), [(s.name, s.reused) for s in again.steps]


def test_an_unknown_output_reference_names_the_function_and_parameter() -> None:
    @ferry.pipeline
    def typo() -> None:
        made = flow.make()
        flow.score(numbers=ferry.OutputRef("make", "numbers.tx"), power=ferry.matrix_value("power"))

    with pytest.raises(ferry.SpecError) as raised:
        ferry.compile(typo)
    message = str(raised.value)
    assert message.startswith("score: input numbers refers to make/numbers.tx, which make does not declare")
    assert "did you mean numbers.txt?" in message

    @ferry.pipeline
    def typo_in_outputs() -> None:
        made = flow.make()
        flow.score(numbers=made.outputs["numbers.tx"], power=ferry.matrix_value("power"))

    with pytest.raises(ferry.SpecError, match="make: output 'numbers.tx' is not declared; did you mean numbers.txt"):
        ferry.compile(typo_in_outputs)


def test_a_cycle_built_in_python_is_refused_naming_it() -> None:
    @ferry.step
    def first() -> None: ...

    @ferry.step
    def second() -> None: ...

    @ferry.pipeline
    def loop() -> None:
        first(needs=["second"])
        second(needs=["first"])

    with pytest.raises(ferry.SpecError, match=r"loop: the steps form a cycle: first -> second -> first"):
        ferry.compile(loop)


def test_other_mistakes_are_named() -> None:
    @ferry.pipeline
    def no_default(count: int) -> None:
        flow.make(count=count)

    with pytest.raises(ferry.SpecError, match="no_default: parameter count needs a default"):
        ferry.compile(no_default)

    @ferry.pipeline
    def wrong_key() -> None:
        made = flow.make()
        flow.score(numbers=made.outputs["numbers.txt"], power=ferry.matrix_value("powr"))

    with pytest.raises(ferry.SpecError, match="score: parameter power takes matrix value 'powr'.*did you mean power"):
        ferry.compile(wrong_key)

    @ferry.pipeline
    def unknown_argument() -> None:
        flow.make(cuont=3)

    with pytest.raises(ferry.SpecError, match="make: no parameter 'cuont'; did you mean count"):
        ferry.compile(unknown_argument)

    with pytest.raises(ferry.SpecError, match="annotated"):
        ferry.step(lambda data: None if False else None) if False else ferry.step(_takes_a_list)

    with pytest.raises(ferry.SpecError, match="numbers: no parameter 'seed'"):
        ferry.compile(flow.numbers, params={"seed": 1})


def _takes_a_list(values: list) -> None: ...


def test_a_step_is_a_plain_function_outside_a_pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    flow.make(count=3)
    assert (tmp_path / "numbers.txt").read_text() == "0\n1\n2\n"
    with pytest.raises(TypeError, match="not called directly"):
        flow.numbers()


def test_the_runner_converts_by_annotation() -> None:
    from ferry.run import convert

    assert convert("3", int, "x") == 3 and convert("2.5", float, "x") == 2.5
    assert convert("true", bool, "x") is True and convert("0", bool, "x") is False
    assert convert("text", str, "x") == "text"
    with pytest.raises(ValueError, match="not a bool"):
        convert("maybe", bool, "x")


def test_the_python_iris_gives_the_yaml_iris_results(client: ferry.Client, iris: Path, tmp_path: Path) -> None:
    from conftest import REPO

    sys.path.insert(0, str(REPO / "examples" / "iris-python"))
    try:
        from iris_pipeline import iris as python_iris
    finally:
        sys.path.pop(0)
    yaml_run = client.submit(iris, params={"seed": 7})
    python_run = client.submit(python_iris, params={"seed": 7})
    yaml_status = yaml_run.wait(progress=False)
    python_status = python_run.wait(progress=False)
    assert [s.name for s in python_status.steps] == [s.name for s in yaml_status.steps]
    accuracy = lambda status: {s.name: s.metrics.get("accuracy") for s in status.steps}  # noqa: E731
    assert accuracy(python_status) == accuracy(yaml_status)
    best = {}
    for name, run in (("yaml", yaml_run), ("python", python_run)):
        artifact = next(a for a in run.artifacts() if a.step == "select" and a.name == "best.json")
        best[name] = json.loads(artifact.download(tmp_path / f"{name}-best.json").read_text())
    assert best["python"] == best["yaml"]
    # The same split bytes: the data preparation is the same computation.
    splits = {
        name: next(a.digest for a in run.artifacts() if a.step == "split" and a.name == "train.csv")
        for name, run in (("yaml", yaml_run), ("python", python_run))
    }
    assert splits["python"] == splits["yaml"]
    again = client.submit(python_iris, params={"seed": 7}).wait(progress=False)
    cached = {s.name for s in again.steps if s.reused == "cached"}
    assert {"split", "standardize"} <= cached, [(s.name, s.reused) for s in again.steps]
