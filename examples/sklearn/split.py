"""Splits data/iris.csv into train.csv and test.csv (stratified, seeded)."""

import argparse

import numpy as np
from sklearn.model_selection import train_test_split

parser = argparse.ArgumentParser()
parser.add_argument("--seed", type=int, required=True)
args = parser.parse_args()

with open("data/iris.csv") as f:
    header = f.readline()
    rows = [line for line in f if line.strip()]
labels = [row.rsplit(",", 1)[1].strip() for row in rows]
train, test = train_test_split(
    rows, test_size=0.3, random_state=args.seed, stratify=np.array(labels)
)
for name, part in (("train.csv", train), ("test.csv", test)):
    with open(name, "w") as f:
        f.write(header)
        f.writelines(part)
print(f"split {len(rows)} rows: {len(train)} to train, {len(test)} to test")
