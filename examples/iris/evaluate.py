"""Step `eval-k<K>`: score a k-NN model on the standardized test set.
Inputs: model (model.json), test (test_std.csv). Output: metrics.json with
k, accuracy, n_test, confusion (true -> predicted -> count) and per_class
precision/recall/f1/support."""

import argparse

from iris_lib import input_path, knn_predict, log, read_dataset, read_json, write_json


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.parse_args()

    model = read_json(input_path("model"))
    X, y = read_dataset(input_path("test"))
    k = model["k"]
    classes = sorted(set(model["classes"]) | set(y))
    log(f"evaluating k={k} on {len(X)} test rows")

    confusion = {t: {p: 0 for p in classes} for t in classes}
    correct = 0
    for xs, truth in zip(X, y):
        pred = knn_predict(model, xs)
        confusion[truth][pred] += 1
        correct += pred == truth
    accuracy = correct / len(X)

    per_class = {}
    for c in classes:
        tp = confusion[c][c]
        predicted = sum(confusion[t][c] for t in classes)
        support = sum(confusion[c].values())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[c] = {"precision": precision, "recall": recall,
                        "f1": f1, "support": support}
        log(f"  {c}: precision={precision:.4f} recall={recall:.4f} support={support}")

    write_json("metrics.json", {"k": k, "accuracy": accuracy, "n_test": len(X),
                                "confusion": confusion, "per_class": per_class})
    log(f"k={k} accuracy={accuracy:.4f} ({correct}/{len(X)})")


if __name__ == "__main__":
    main()
