"""Runs the Python-authored iris pipeline on the cluster the `ferry` CLI is
configured for (start one with `ferry dev`), follows it, and prints the best
model and the sweep's accuracies.

    pip install './sdk/python[pandas]'
    python3 examples/iris-python/run.py [--seed 42]
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ferry  # noqa: E402
from iris_pipeline import iris  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    with ferry.Client() as client:
        run = client.submit(iris, params={"seed": args.seed})
        print(f"run {run.id} submitted")
        status = run.wait()
        for step in status.steps:
            print(f"{step.name:10} {step.state:10} {step.reused or '':7} {step.metrics}")
        best = next(a for a in run.artifacts() if a.name == "best.json")
        print(best.download(Path(f"iris-python-{run.id}-best.json")).read_text())


if __name__ == "__main__":
    main()
