#!/usr/bin/env python3
"""WaNet where it is a strong backdoor (run by hand, never collected by pytest).

    python tests/bench_wanet.py   # all 60,000 training images, about 6 min on a 2-core AVX-512 VM

The backdoor matrix runs on 10,000 images, where WaNet at strength 1.0 stays a weak backdoor in 3
epochs (ASR 5% and 69%). This benchmark plants it where it is strong: WaNet strength 1.0 (no noise
mode) in 10% of all 60,000 training images, target class 5, the warp drawn from seed 7. Then the
configured defense (``combined``) runs blind, its flags are removed and a fresh model is trained on
the rest; a baseline is trained on the unpoisoned images for comparison. Every number in
secure_ai_outputs/bench_wanet.json is this run's own, computed with the project's functions.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from secure_ai_mnist.common import atomic_write_bytes, setup_logging  # noqa: E402
from secure_ai_mnist.config import Config  # noqa: E402
from secure_ai_mnist.data import load_mnist, to_model_input  # noqa: E402
from secure_ai_mnist.detection import COMBINED, DETECTORS, detection_metrics, run_detectors  # noqa: E402
from secure_ai_mnist.matrix import MatrixPoint, attack_record, poisoned_set  # noqa: E402
from secure_ai_mnist.model import configure_tensorflow, predicted_labels, seed_everything, train_cnn  # noqa: E402
from secure_ai_mnist.provenance import git_state, host_summary  # noqa: E402
from secure_ai_mnist.triggers import TriggerSpec  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=0.1, help="poison share of the training set")
    parser.add_argument("--out", type=Path, default=ROOT / "secure_ai_outputs" / "bench_wanet.json")
    args = parser.parse_args()
    setup_logging("INFO")
    cfg, started, clock = Config(), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), time.perf_counter()
    data = load_mnist(cfg)
    configure_tensorflow(cfg.threads)
    seed_everything(cfg.seed)
    x, y = to_model_input(data.x_train), data.y_train
    x_test, y_test = to_model_input(data.x_test), data.y_test
    point = MatrixPoint("wanet_strong", "wanet", round(args.rate * len(y)), 5,
                        TriggerSpec(family="wanet", strength=1.0, seed=7))
    idx, x_p, y_p = poisoned_set(x, y, point, cfg.seed)
    poisoned, _ = train_cnn(x_p, y_p, cfg, "wanet_strong")
    rows, info = run_detectors(poisoned, x_p, y_p, cfg, references=False)
    is_poison = np.isin(np.arange(len(y_p)), idx)
    keep = ~rows[DETECTORS.index(COMBINED)].astype(bool)
    cleaned, _ = train_cnn(x_p[keep], y_p[keep], cfg, "wanet_strong_cleaned")
    baseline, _ = train_cnn(x, y, cfg, "wanet_strong_baseline")
    record = {
        "note": "WaNet where it is a strong backdoor, written by tests/bench_wanet.py; every number is this run's own.",
        "started_utc": started, "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "wall_s": round(time.perf_counter() - clock, 1),
        "code": git_state(),
        "host": host_summary(), "point": point.record(), "n_train": int(len(y)), "epochs": cfg.epochs,
        "configured_defense": COMBINED,
        "poisoned": attack_record(predicted_labels(poisoned, 256), x_test, y_test, point),
        "detection": {name: {**detection_metrics(rows[i].astype(bool), is_poison), "uses_ground_truth": False}
                      for i, name in enumerate(DETECTORS) if name in info},
        "after_removal": {"removed": int((~keep).sum()),
                          **attack_record(predicted_labels(cleaned, 256), x_test, y_test, point)},
        "baseline_clean_accuracy": float(np.mean(predicted_labels(baseline, 256)(x_test) == y_test)),
    }
    atomic_write_bytes(args.out, (json.dumps(record, indent=2) + "\n").encode())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
