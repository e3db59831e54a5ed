"""A small Python-authored pipeline for the SDK's tests: a step writes
numbers, a sweep of three trials scores them (one metric per trial, and a
curve), with a pipeline parameter passed through."""

from pathlib import Path

import ferry

SMALL = ferry.Resources(cpu=0.25, memory="128Mi")


@ferry.step(outputs=["numbers.txt"], resources=SMALL)
def make(count: int = 10) -> None:
    """Writes 0 .. count-1, one per line."""
    Path("numbers.txt").write_text("\n".join(str(i) for i in range(count)) + "\n")


@ferry.step(outputs=["score.txt"], matrix={"power": [1, 2, 3]}, max_parallel=2, resources=SMALL, retries=1)
def score(numbers: ferry.Input["make/numbers.txt"], power: int, scale: float = 1.0, label: str = "x") -> None:
    """Sums the numbers to the trial's power, times scale."""
    assert isinstance(numbers, Path) and isinstance(power, int) and isinstance(scale, float)
    values = [int(line) for line in numbers.read_text().split()]
    total = sum(v**power for v in values) * scale
    Path("score.txt").write_text(f"{label} {total}\n")
    for index, value in enumerate(values):
        ferry.log_metric("term", value**power, step=index)
    ferry.log_metric("total", total)
    print(f"power {power}: total {total}")


@ferry.pipeline(name="numbers")
def numbers(count: int = 10, scale: float = 1.0) -> None:
    """make, then the score sweep."""
    made = make(count=count)
    score(numbers=made.outputs["numbers.txt"], power=ferry.matrix_value("power"), scale=scale, label="run")
