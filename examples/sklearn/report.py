"""Reads every trial of the sweep and writes best.json (the most accurate)."""

import json
import os

best_dir = os.environ["FERRY_GATHER_TRAIN_BEST"]
with open(os.path.join(best_dir, "metrics.json")) as f:
    best = json.load(f)
with open(os.path.join(os.environ["FERRY_GATHER_TRAIN"], "trials.json")) as f:
    manifest = json.load(f)
with open("best.json", "w") as f:
    json.dump(best, f)
print(f"best of {len(manifest['trials'])} trials: {best}")
