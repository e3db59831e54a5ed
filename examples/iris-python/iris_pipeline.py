"""The iris pipeline of examples/iris, authored in Python with Ferry's SDK.

    split -> standardize -> train.0 .. train.11 (a sweep, 4 at a time) -> select

Each step is a plain function (standard library only, plus this folder's
iris_lib.py and knn.py); `ferry.compile(iris)` gives the same spec shape as
examples/iris/pipeline.yaml, and the run gives the same results. Run it with
`python3 examples/iris-python/run.py` against `ferry dev`.
"""

import math
import os
import random
import shutil
from pathlib import Path

import ferry
from iris_lib import FEATURES, apply_scaler, log, read_dataset, read_json, write_dataset, write_json
from knn import score

SMALL = ferry.Resources(cpu=0.25, memory="128Mi")
HERE = Path(__file__).resolve().parent


@ferry.step(outputs=["train.csv", "test.csv"], resources=SMALL, timeout="2m",
            cache={"paths": ["iris_pipeline.py", "iris_lib.py", "data/"]})
def split(seed: int = 42, test_fraction: float = 0.3) -> None:
    """Shuffles data/iris.csv with `seed` and splits it, stratified by class."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    X, y = read_dataset(HERE / "data" / "iris.csv")
    rows = list(zip(X, y))
    random.Random(seed).shuffle(rows)
    train, test = [], []
    for label in sorted(set(y)):
        members = [r for r in rows if r[1] == label]
        n_test = round(len(members) * test_fraction)
        test.extend(members[:n_test])
        train.extend(members[n_test:])
    order = {id(r): i for i, r in enumerate(rows)}
    train.sort(key=lambda r: order[id(r)])
    test.sort(key=lambda r: order[id(r)])
    write_dataset("train.csv", [r[0] for r in train], [r[1] for r in train])
    write_dataset("test.csv", [r[0] for r in test], [r[1] for r in test])
    log(f"wrote train.csv ({len(train)} rows) and test.csv ({len(test)} rows) seed={seed}")


@ferry.step(outputs=["train_std.csv", "test_std.csv", "scaler.json"], resources=SMALL, timeout="2m",
            cache={"paths": ["iris_pipeline.py", "iris_lib.py"]})
def standardize(train: ferry.Input["split/train.csv"], test: ferry.Input["split/test.csv"]) -> None:
    """Fits per-feature mean and (population) std on the training set only."""
    X_train, y_train = read_dataset(train)
    X_test, y_test = read_dataset(test)
    n = len(X_train)
    mean = [sum(col) / n for col in zip(*X_train)]
    std = []
    for j, col in enumerate(zip(*X_train)):
        s = math.sqrt(sum((v - mean[j]) ** 2 for v in col) / n)
        std.append(s if s > 0 else 1.0)
    scaler = {"features": FEATURES, "mean": mean, "std": std}
    write_dataset("train_std.csv", apply_scaler(X_train, scaler), y_train)
    write_dataset("test_std.csv", apply_scaler(X_test, scaler), y_test)
    write_json("scaler.json", scaler)
    log("wrote train_std.csv, test_std.csv, scaler.json")


@ferry.step(outputs=["model.json", "metrics.json"], resources=SMALL, timeout="2m", retries=1, cache=False,
            matrix={"k": [15, 9, 7, 5, 3, 1], "weights": ["uniform", "distance"]}, max_parallel=4)
def train(train: ferry.Input["standardize/train_std.csv"], test: ferry.Input["standardize/test_std.csv"],
          scaler: ferry.Input["standardize/scaler.json"], k: int, weights: str) -> None:
    """One trial of the sweep: a k-NN classifier scored on the test set."""
    X, y = read_dataset(train)
    X_test, y_test = read_dataset(test)
    step = os.environ.get("FERRY_STEP", "train")
    model = {"type": "knn", "k": k, "weights": weights, "step": step, "features": FEATURES,
             "classes": sorted(set(y)), "points": X, "labels": y, "scaler": read_json(scaler)}
    write_json("model.json", model)
    scores = score(model, X_test, y_test)
    write_json("metrics.json", {"k": k, "weights": weights, **scores})
    log(f"{step}: k={k} weights={weights} accuracy={scores['accuracy']:.4f} macro_f1={scores['macro_f1']:.4f}")
    ferry.log_metric("accuracy", scores["accuracy"])
    ferry.log_metric("macro_f1", scores["macro_f1"])


@ferry.step(outputs=["best.json", "best_model.json"], resources=SMALL, timeout="2m",
            gather=[{"step": "train", "best": "accuracy", "goal": "max"}],
            cache={"paths": ["iris_pipeline.py", "iris_lib.py"]})
def select(trials: ferry.Gather["train"]) -> None:
    """Keeps the trial Ferry ranked best (highest accuracy, first of equals)."""
    manifest = read_json(trials / "trials.json")
    best = next(t for t in manifest["trials"] if t["step"] == manifest["best"])
    model_path = trials / best["outputs"]["model.json"]
    model = read_json(model_path)
    result = {"step": best["step"], "index": best["index"], "k": model["k"], "weights": model["weights"],
              "accuracy": best["metrics"]["accuracy"], "macro_f1": best["metrics"].get("macro_f1")}
    write_json("best.json", result)
    shutil.copyfile(model_path, "best_model.json")
    ferry.log_metric("accuracy", result["accuracy"])
    ferry.log_metric("macro_f1", result["macro_f1"])
    ferry.log_metric("k", result["k"])
    log(f"best model: {best['step']} k={result['k']} weights={result['weights']} accuracy={result['accuracy']:.4f}")


@ferry.pipeline(name="iris-python")
def iris(seed: int = 42, test_fraction: float = 0.3) -> None:
    """split -> standardize -> the train sweep -> select."""
    data = split(seed=seed, test_fraction=test_fraction)
    scaled = standardize(train=data.outputs["train.csv"], test=data.outputs["test.csv"])
    train(train=scaled.outputs["train_std.csv"], test=scaled.outputs["test_std.csv"],
          scaler=scaled.outputs["scaler.json"], k=ferry.matrix_value("k"), weights=ferry.matrix_value("weights"))
    select()
