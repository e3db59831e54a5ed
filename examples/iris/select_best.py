"""Step `select`: pick the best model by test accuracy.
Inputs: metrics_<c> and model_<c> for every candidate c (default k1 k5 k15).
Outputs: best.json {"step", "k", "accuracy"} and best_model.json (a copy of
the chosen model.json). Ties on accuracy go to the LARGER k (the smoother,
lower-variance classifier)."""

import argparse
import shutil

from iris_lib import fail, input_path, log, read_json, write_json


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--candidates", nargs="+", default=["k1", "k5", "k15"],
                    help="suffixes of the metrics_<c>/model_<c> inputs")
    args = ap.parse_args()

    results = []
    for c in args.candidates:
        metrics = read_json(input_path(f"metrics_{c}"))
        model_path = input_path(f"model_{c}")
        model = read_json(model_path)
        if metrics["k"] != model["k"]:
            fail(f"candidate {c}: metrics k={metrics['k']} but model k={model['k']}")
        log(f"candidate {c}: k={metrics['k']} accuracy={metrics['accuracy']:.4f}")
        results.append((metrics["accuracy"], metrics["k"], model.get("step", f"train-{c}"),
                        model_path))

    # Highest accuracy wins; on a tie the larger k wins.
    accuracy, k, step, model_path = max(results, key=lambda r: (r[0], r[1]))
    write_json("best.json", {"step": step, "k": k, "accuracy": accuracy})
    shutil.copyfile(model_path, "best_model.json")
    log("wrote best.json and best_model.json")
    log(f"best model: k={k} accuracy={accuracy:.4f}")


if __name__ == "__main__":
    main()
