"""Step `split`: shuffle data/iris.csv with a seed and make a stratified
train/test split. Outputs: train.csv, test.csv (raw, unscaled features)."""

import argparse
import os
import random

from iris_lib import fail, log, read_dataset, write_dataset

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--test-fraction", type=float, required=True)
    ap.add_argument("--data", default=os.path.join(HERE, "data", "iris.csv"),
                    help="dataset CSV (default: data/iris.csv in the bundle)")
    args = ap.parse_args()
    if not 0.0 < args.test_fraction < 1.0:
        fail(f"--test-fraction must be between 0 and 1, got {args.test_fraction}")

    X, y = read_dataset(args.data)
    log(f"read {len(X)} rows from {os.path.relpath(args.data)}")

    rows = list(zip(X, y))
    random.Random(args.seed).shuffle(rows)

    # Stratify: within each class (in shuffled order) the first
    # round(n * fraction) rows go to test, the rest to train.
    train, test = [], []
    for label in sorted(set(y)):
        members = [r for r in rows if r[1] == label]
        n_test = round(len(members) * args.test_fraction)
        if n_test == 0 or n_test == len(members):
            fail(f"class {label!r} ({len(members)} rows) cannot be split "
                 f"with test fraction {args.test_fraction}")
        test.extend(members[:n_test])
        train.extend(members[n_test:])
        log(f"class {label}: {len(members) - n_test} train / {n_test} test")

    # Restore the global shuffled order so classes are interleaved.
    order = {id(r): i for i, r in enumerate(rows)}
    train.sort(key=lambda r: order[id(r)])
    test.sort(key=lambda r: order[id(r)])

    write_dataset("train.csv", [r[0] for r in train], [r[1] for r in train])
    write_dataset("test.csv", [r[0] for r in test], [r[1] for r in test])
    log(f"wrote train.csv ({len(train)} rows) and test.csv ({len(test)} rows) "
        f"seed={args.seed} test_fraction={args.test_fraction}")


if __name__ == "__main__":
    main()
