"""Step `select`: pick the best trial of the `train` sweep.

Ferry gathers the sweep (`gather: [{step: train, best: accuracy, goal: max}]`):
FERRY_GATHER_TRAIN names a directory holding every trial's outputs at
`<trial>/<output>` and trials.json, which lists each trial's values, state,
outputs and metrics, and names the best trial.

The rule: the highest accuracy wins; among equal accuracies, the trial that
comes first in the sweep's expansion order (lowest index) wins. That is Ferry's
own rule for `best`, and pipeline.yaml orders the sweep so that the first of
equals is the smoothest model (largest k, uniform votes). This script ranks
the trials by the same rule and stops with an error if its choice and Ferry's
disagree.

Outputs: best.json {"step", "index", "k", "weights", "accuracy", "macro_f1"}
and best_model.json (a byte-for-byte copy of the best trial's model.json).
Metrics reported to Ferry: the chosen trial's accuracy, macro_f1 and k."""

import argparse
import os
import shutil

from iris_lib import fail, gather_dir, log, read_json, report_metric, write_json


def rank(trials, metric, goal):
    """Trials that succeeded and reported `metric`, best first: by value (the
    highest for goal `max`, the lowest for `min`), then by lowest index."""
    sign = -1.0 if goal == "max" else 1.0
    scored = [t for t in trials
              if t["state"] == "succeeded" and metric in t["metrics"]
              and t["metrics"][metric] == t["metrics"][metric]]  # NaN never ranks
    return sorted(scored, key=lambda t: (sign * t["metrics"][metric], t["index"]))


def table(ranked):
    """The ranked trials as text lines: rank, trial, its values, its metrics."""
    rows = [["RANK", "TRIAL", "K", "WEIGHTS", "ACCURACY", "MACRO_F1"]]
    for n, t in enumerate(ranked, start=1):
        rows.append([str(n), t["step"], t["values"]["k"], t["values"]["weights"],
                     f"{t['metrics']['accuracy']:.4f}",
                     f"{t['metrics'].get('macro_f1', float('nan')):.4f}"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sweep", default="train", help="the gathered matrix step")
    args = ap.parse_args()

    root = gather_dir(args.sweep)
    manifest = read_json(os.path.join(root, "trials.json"))
    metric = manifest["metric"]
    trials = manifest["trials"]
    ranked = rank(trials, metric, manifest["goal"])
    log(f"{len(trials)} trials of {manifest['step']!r}, ranked by {metric} "
        f"({manifest['goal']}); ties go to the lowest index")
    for line in table(ranked):
        log(line)
    missing = [t["step"] for t in trials if t not in ranked]
    if missing:
        log(f"not ranked (failed or no {metric}): {', '.join(missing)}")
    if not ranked:
        fail(f"no trial of {manifest['step']!r} succeeded with a {metric} metric")

    best = ranked[0]
    if best["step"] != manifest["best"]:
        fail(f"this script picked {best['step']} but Ferry picked {manifest['best']}; "
             f"the tie-breaking rules disagree")
    log(f"Ferry picked {manifest['best']} (FERRY_GATHER_{args.sweep.upper()}_BEST)")

    model_path = os.path.join(root, best["outputs"]["model.json"])
    model = read_json(model_path)
    result = {
        "step": best["step"],
        "index": best["index"],
        "k": model["k"],
        "weights": model["weights"],
        "accuracy": best["metrics"]["accuracy"],
        "macro_f1": best["metrics"].get("macro_f1"),
    }
    write_json("best.json", result)
    shutil.copyfile(model_path, "best_model.json")
    log("wrote best.json and best_model.json")
    report_metric("accuracy", result["accuracy"])
    if result["macro_f1"] is not None:
        report_metric("macro_f1", result["macro_f1"])
    report_metric("k", result["k"])
    log(f"best model: {best['step']} k={result['k']} weights={result['weights']} "
        f"accuracy={result['accuracy']:.4f}")


if __name__ == "__main__":
    main()
