"""The k-nearest-neighbours classifier of the iris example, and how it is scored.

Kept apart from iris_lib.py on purpose: `split` and `standardize` list only
iris_lib.py (and their own script) under `cache.paths`, so changing the
classifier here leaves their cached results valid.
"""

import math

WEIGHTS = ("uniform", "distance")


def euclidean(a, b):
    return math.sqrt(sum((p - q) ** 2 for p, q in zip(a, b)))


def neighbours(model, x):
    """The k training points nearest to `x`, as (distance, index) pairs.

    Equal distances keep training-set order (the sort is on (distance, index)),
    so the neighbourhood is deterministic.
    """
    return sorted((euclidean(x, p), i) for i, p in enumerate(model["points"]))[: model["k"]]


def knn_predict(model, x):
    """Predict the label of one (already standardized) point.

    `uniform`: each neighbour casts one vote. `distance`: a neighbour's vote
    weighs 1/distance; if some neighbours sit exactly on `x` (the iris data has
    duplicate rows), only they vote, one vote each. A tied vote goes to the tied
    label whose nearest neighbour is closest.
    """
    near = neighbours(model, x)
    distance_weighted = model["weights"] == "distance"
    exact = [(d, i) for d, i in near if d == 0.0]
    if distance_weighted and exact:
        near = exact
    votes, first_rank = {}, {}
    for rank, (distance, i) in enumerate(near):
        label = model["labels"][i]
        vote = 1.0 / distance if distance_weighted and distance > 0.0 else 1.0
        votes[label] = votes.get(label, 0.0) + vote
        first_rank.setdefault(label, rank)
    return min(votes, key=lambda label: (-votes[label], first_rank[label]))


def score(model, X, y):
    """Classify (X, y) and return accuracy, macro F1, the confusion matrix
    (`confusion[true][predicted]` is a count) and per-class precision, recall,
    F1 and support."""
    classes = sorted(set(model["classes"]) | set(y))
    confusion = {t: {p: 0 for p in classes} for t in classes}
    for xs, truth in zip(X, y):
        confusion[truth][knn_predict(model, xs)] += 1
    correct = sum(confusion[c][c] for c in classes)

    per_class = {}
    for c in classes:
        tp = confusion[c][c]
        predicted = sum(confusion[t][c] for t in classes)
        support = sum(confusion[c].values())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[c] = {"precision": precision, "recall": recall, "f1": f1,
                        "support": support}
    return {
        "accuracy": correct / len(X),
        "macro_f1": sum(p["f1"] for p in per_class.values()) / len(classes),
        "correct": correct,
        "n_test": len(X),
        "confusion": confusion,
        "per_class": per_class,
    }
