"""Step `train-k<K>`: "train" a k-NN classifier. Inputs: train (standardized
training set), scaler (scaler.json). Output: model.json holding k, the
standardized training points and labels, and the scaler, so the model can
classify raw measurements on its own."""

import argparse

from iris_lib import (FEATURES, fail, input_path, log, read_dataset,
                      read_json, step_name, write_json)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--k", type=int, required=True, help="number of neighbours")
    args = ap.parse_args()

    X, y = read_dataset(input_path("train"))
    scaler = read_json(input_path("scaler"))
    if args.k < 1 or args.k > len(X):
        fail(f"--k must be between 1 and {len(X)} (training rows), got {args.k}")

    classes = sorted(set(y))
    log(f"k={args.k}: {len(X)} training points, classes {classes}")
    model = {
        "type": "knn",
        "k": args.k,
        "step": step_name(f"train-k{args.k}"),
        "features": FEATURES,
        "classes": classes,
        "points": X,
        "labels": y,
        "scaler": scaler,
    }
    write_json("model.json", model)
    log(f"wrote model.json (k={args.k}, {len(X)} points)")


if __name__ == "__main__":
    main()
