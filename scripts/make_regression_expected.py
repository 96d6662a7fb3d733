#!/usr/bin/env python3
"""Writes crates/lmforge/tests/data/regression.json: reference values for
crates/lmforge/src/metrics/regression.rs from SciPy (pearsonr, spearmanr with average ranks for
ties) and NumPy (mean squared and absolute error), on hand-made and seeded random series
(continuous, tied, STS-B-like 0-5 scores rounded to 0.2).

    python3 -m venv /tmp/ref && /tmp/ref/bin/pip install -q seqeval && /tmp/ref/bin/python scripts/make_regression_expected.py
(seqeval brings NumPy and SciPy, through scikit-learn.)
"""

import json
import os
import random
from importlib.metadata import version

import numpy as np
from scipy.stats import pearsonr, spearmanr

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates", "lmforge", "tests", "data", "regression.json")


def case(name, gold, pred):
    g, p = np.array(gold, dtype=np.float64), np.array(pred, dtype=np.float64)
    return {
        "name": name,
        "gold": gold,
        "pred": pred,
        "mse": float(np.mean((g - p) ** 2)),
        "mae": float(np.mean(np.abs(g - p))),
        "pearson": float(pearsonr(g, p)[0]),
        "spearman": float(spearmanr(g, p)[0]),
    }


def main():
    rng = random.Random(20261205)
    cases = [
        case("hand", [1.0, 2.0, 3.0, 4.0, 5.0], [1.1, 1.9, 3.2, 3.9, 5.3]),
        case("ties", [1.0, 1.0, 2.0, 3.0, 3.0, 3.0], [0.5, 0.7, 0.7, 2.0, 1.0, 4.0]),
        case("anti", [0.0, 1.0, 2.0, 3.0], [3.0, 2.5, 1.0, -1.0]),
    ]
    for i in range(6):
        n = rng.randint(10, 300)
        gold = [round(rng.uniform(0, 5) / 0.2) * 0.2 if i % 2 else rng.gauss(0, 1) for _ in range(n)]
        pred = [g + rng.gauss(0, 0.3 + 0.3 * i) for g in gold]
        cases.append(case(f"random_{i}", gold, pred))
    doc = {"scipy": version("scipy"), "numpy": version("numpy"), "cases": cases}
    with open(OUT, "w") as f:
        f.write(json.dumps({k: v for k, v in doc.items() if k != "cases"})[:-1] + ', "cases": [\n')
        f.write(",\n".join(json.dumps(c) for c in cases))
        f.write("\n]}\n")
    print(f"wrote {len(cases)} cases to {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()
