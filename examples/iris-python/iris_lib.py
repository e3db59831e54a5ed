"""Shared helpers for the Ferry iris example (standard library only): CSV and
JSON I/O, the `FERRY_*` environment (inputs, gathered sweeps, metrics) and
feature scaling.

Every step script imports this module: it is part of the code bundle that
Ferry copies into each step's work directory. `split` and `standardize` list it
under `cache.paths`, so editing it invalidates their cached results; the
classifier lives in knn.py for that reason.
"""

import csv
import json
import os
import sys

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
LABEL = "species"


def log(msg):
    """Print a progress line and flush it so Ferry streams it immediately."""
    print(msg, flush=True)


def fail(msg):
    """Print an error to stderr and exit non-zero (Ferry marks the step failed)."""
    print(f"error: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def step_name(default):
    return os.environ.get("FERRY_STEP", default)


def input_path(name):
    """Return the staged path of declared input `name` (from FERRY_INPUT_<NAME>)."""
    var = "FERRY_INPUT_" + name.upper()
    path = os.environ.get(var)
    if not path:
        fail(f"environment variable {var} is not set; "
             f"declare input '{name}' for this step in pipeline.yaml")
    if not os.path.isfile(path):
        fail(f"{var} points to {path!r}, which is not a file")
    return path


def gather_dir(step):
    """Return the directory where Ferry staged every trial of sweep `step`
    (from FERRY_GATHER_<STEP>): `<trial>/<output>` files and trials.json."""
    var = "FERRY_GATHER_" + step.upper()
    path = os.environ.get(var)
    if not path:
        fail(f"environment variable {var} is not set; "
             f"add `gather: [{step}]` to this step in pipeline.yaml")
    if not os.path.isdir(path):
        fail(f"{var} points to {path!r}, which is not a directory")
    return path


def report_metric(name, value):
    """Report a metric to Ferry: one JSON line appended to the file named by
    FERRY_METRICS (`ferry metrics RUN` shows the last value of each name).
    Outside Ferry, where the variable is unset, the value is only printed."""
    path = os.environ.get("FERRY_METRICS")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"name": name, "value": value}) + "\n")
    shown = f"{value:.4f}" if isinstance(value, float) else value
    log(f"metric {name}={shown}")


def read_dataset(path):
    """Read a CSV with the four feature columns and a species column.

    Returns (X, y): X is a list of float lists, y a list of label strings.
    """
    X, y = [], []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in FEATURES + [LABEL] if c not in (reader.fieldnames or [])]
        if missing:
            fail(f"{path}: missing column(s) {', '.join(missing)}")
        for lineno, row in enumerate(reader, start=2):
            try:
                X.append([float(row[c]) for c in FEATURES])
            except (TypeError, ValueError):
                fail(f"{path}:{lineno}: bad numeric value in {row}")
            y.append(row[LABEL])
    if not X:
        fail(f"{path}: no data rows")
    return X, y


def write_dataset(path, X, y, digits=None):
    """Write (X, y) as CSV with the standard header."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(FEATURES + [LABEL])
        for xs, label in zip(X, y):
            vals = [repr(v) if digits is None else f"{v:.{digits}f}" for v in xs]
            w.writerow(vals + [label])


def read_json(path):
    with open(path) as f:
        return json.load(f)


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def apply_scaler(X, scaler):
    """Standardize rows with a scaler dict {"features", "mean", "std"}."""
    mean, std = scaler["mean"], scaler["std"]
    return [[(v - m) / s for v, m, s in zip(row, mean, std)] for row in X]
