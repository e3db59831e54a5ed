"""Step `train` (one trial of the sweep, e.g. `train.3`): "train" a k-NN
classifier with this trial's hyperparameters and score it on the test set.

Inputs: train and test (standardized sets), scaler (scaler.json).
Outputs: model.json (k, weights, the standardized training points and labels,
and the scaler, so the model can classify raw measurements on its own) and
metrics.json (accuracy, macro F1, confusion matrix, per-class scores).
Metrics reported to Ferry: accuracy and macro_f1."""

import argparse

from iris_lib import (FEATURES, fail, input_path, log, read_dataset,
                      read_json, report_metric, step_name, write_json)
from knn import WEIGHTS, score


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--k", type=int, required=True, help="number of neighbours")
    ap.add_argument("--weights", choices=WEIGHTS, default="uniform",
                    help="uniform: one vote per neighbour; distance: votes weigh 1/distance")
    args = ap.parse_args()

    X, y = read_dataset(input_path("train"))
    X_test, y_test = read_dataset(input_path("test"))
    scaler = read_json(input_path("scaler"))
    if args.k < 1 or args.k > len(X):
        fail(f"--k must be between 1 and {len(X)} (training rows), got {args.k}")

    classes = sorted(set(y))
    step = step_name("train")
    log(f"{step}: k={args.k} weights={args.weights}: {len(X)} training points, "
        f"classes {classes}")
    model = {
        "type": "knn",
        "k": args.k,
        "weights": args.weights,
        "step": step,
        "features": FEATURES,
        "classes": classes,
        "points": X,
        "labels": y,
        "scaler": scaler,
    }
    write_json("model.json", model)

    scores = score(model, X_test, y_test)
    for c, s in scores["per_class"].items():
        log(f"  {c}: precision={s['precision']:.4f} recall={s['recall']:.4f} "
            f"f1={s['f1']:.4f} support={s['support']}")
    write_json("metrics.json", {"k": args.k, "weights": args.weights, **scores})
    log(f"wrote model.json and metrics.json: accuracy={scores['accuracy']:.4f} "
        f"({scores['correct']}/{scores['n_test']}) macro_f1={scores['macro_f1']:.4f}")
    report_metric("accuracy", scores["accuracy"])
    report_metric("macro_f1", scores["macro_f1"])


if __name__ == "__main__":
    main()
