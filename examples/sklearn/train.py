"""Trains a random forest on the train split and scores it on the test split.

Reports accuracy and macro F1 to Ferry (FERRY_METRICS) and writes metrics.json.
"""

import argparse
import json
import os

import numpy as np
import sklearn
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import accuracy_score, f1_score


def load(path):
    data = np.genfromtxt(path, delimiter=",", skip_header=1, dtype=str)
    return data[:, :4].astype(float), data[:, 4]


parser = argparse.ArgumentParser()
parser.add_argument("--trees", type=int, required=True)
parser.add_argument("--depth", type=int, required=True)
parser.add_argument("--seed", type=int, required=True)
args = parser.parse_args()

x_train, y_train = load(os.environ["FERRY_INPUT_TRAIN"])
x_test, y_test = load(os.environ["FERRY_INPUT_TEST"])
model = RandomForestClassifier(
    n_estimators=args.trees, max_depth=args.depth, random_state=args.seed
)
model.fit(x_train, y_train)
predicted = model.predict(x_test)
metrics = {
    "accuracy": accuracy_score(y_test, predicted),
    "macro_f1": f1_score(y_test, predicted, average="macro"),
}
with open("metrics.json", "w") as f:
    json.dump({"trees": args.trees, "depth": args.depth, **metrics}, f)
with open(os.environ["FERRY_METRICS"], "a") as f:
    for name, value in metrics.items():
        f.write(json.dumps({"name": name, "value": value}) + "\n")
print(
    f"scikit-learn {sklearn.__version__}: {args.trees} trees, depth {args.depth}: "
    f"accuracy {metrics['accuracy']:.3f}"
)
