"""Step `standardize`: fit per-feature mean/std on the training set only and
apply it to both sets. Inputs: train, test. Outputs: train_std.csv,
test_std.csv, scaler.json."""

import argparse
import math

from iris_lib import (FEATURES, apply_scaler, input_path, log, read_dataset,
                      write_dataset, write_json)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.parse_args()

    X_train, y_train = read_dataset(input_path("train"))
    X_test, y_test = read_dataset(input_path("test"))
    log(f"train: {len(X_train)} rows, test: {len(X_test)} rows")

    n = len(X_train)
    mean = [sum(col) / n for col in zip(*X_train)]
    std = []
    for j, col in enumerate(zip(*X_train)):
        s = math.sqrt(sum((v - mean[j]) ** 2 for v in col) / n)  # population std
        std.append(s if s > 0 else 1.0)  # constant feature: leave unscaled
    scaler = {"features": FEATURES, "mean": mean, "std": std}
    for name, m, s in zip(FEATURES, mean, std):
        log(f"{name}: mean={m:.4f} std={s:.4f}")

    write_dataset("train_std.csv", apply_scaler(X_train, scaler), y_train)
    write_dataset("test_std.csv", apply_scaler(X_test, scaler), y_test)
    write_json("scaler.json", scaler)
    log("wrote train_std.csv, test_std.csv, scaler.json")


if __name__ == "__main__":
    main()
