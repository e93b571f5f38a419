#!/usr/bin/env python3
"""Robust-profile benchmark (run by hand, never collected by pytest).

    python tests/bench_robust.py --out robust_bench.json [--restarts 3] [--pgd-limit 0] [--model-in M.keras]
        [flags of the main script, e.g. --autoattack-targets 9 --square-limit 1000]

Trains the robust profile's defense (``--defense robust``) on the full MNIST training set,
every planned epoch (it stops with an error when its first epochs project past
``--robust-budget-min``), or loads ``--model-in``, then measures on the test set: clean
accuracy, white-box FGSM, white-box PGD-40 (eps 0.3, step 0.01, random starts; a sample
counts as robust only if it survives every start) and AutoAttack on the same images (APGD-CE
and APGD-T on all of them, Square on the first --square-limit). Writes one JSON with the
training record and every number.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--restarts", type=int, default=3, help="PGD random starts")
    parser.add_argument("--pgd-limit", type=int, default=0, help="test images for PGD (0 = all 10,000)")
    parser.add_argument("--model-out", type=Path, default=None, help="also save the trained model here")
    parser.add_argument("--model-in", type=Path, default=None, help="evaluate this saved model instead of training")
    args, rest = parser.parse_known_args()

    import keras

    from secure_ai_mnist.attacks import generate_fgsm, generate_pgd
    from secure_ai_mnist.autoattack import autoattack
    from secure_ai_mnist.common import setup_logging
    from secure_ai_mnist.config import parse_config
    from secure_ai_mnist.data import load_mnist, sample_subset, to_model_input
    from secure_ai_mnist.defenses import train_robust
    from secure_ai_mnist.evaluation import accuracy
    from secure_ai_mnist.model import configure_tensorflow, save_model

    cfg = parse_config(["--pgd-restarts", str(args.restarts), *rest])
    setup_logging("INFO")
    data = load_mnist(cfg)
    configure_tensorflow(cfg.threads)
    x_train, y_train = to_model_input(data.x_train), data.y_train
    x_test, y_test = to_model_input(data.x_test), data.y_test
    started, model_file = time.time(), None
    if args.model_in:
        model, record = keras.models.load_model(args.model_in, safe_mode=True), {"loaded_from": str(args.model_in)}
    else:
        model, record = train_robust(x_train, y_train, cfg, "defense_robust")
        # Saved before the hour of attacks, so an evaluation can be rerun (or redone) with --model-in.
        model_file = save_model(model, args.model_out) if args.model_out else None
    rng = np.random.default_rng(cfg.seed)
    idx = sample_subset(len(y_test), args.pgd_limit, rng)
    clean = accuracy(model, x_test, y_test, cfg.attack_batch_size)
    x_fgsm, _ = generate_fgsm(model, x_test, y_test, cfg, "test set vs robust defense")
    fgsm = accuracy(model, x_fgsm, y_test, cfg.attack_batch_size)
    _, pgd = generate_pgd(model, x_test[idx], y_test[idx], cfg, rng, "robust defense")
    evaluated = time.time()
    _, robust = autoattack(model, x_test[idx], y_test[idx], cfg, np.random.default_rng(cfg.seed + 1), "robust defense")
    robust["wall_s"] = round(time.time() - evaluated, 1)
    result = {"training": record, "clean_accuracy": clean, "fgsm_whitebox_accuracy": fgsm, "pgd_whitebox": pgd,
              "autoattack": {"iterations": cfg.autoattack_iters, "target_classes": cfg.autoattack_targets,
                             "square_queries": cfg.square_queries, "square_limit": cfg.square_limit, **robust},
              "wall_s": round(time.time() - started, 1), "config": cfg.to_json(),
              "host": {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version()}}
    if model_file:
        result["model_file"] = model_file
    args.out.write_text(json.dumps(result, indent=2))
    print(f"robust defense: clean {clean:.4f}, FGSM white-box {fgsm:.4f}, PGD-{cfg.pgd_steps} x{cfg.pgd_restarts} "
          f"{pgd['robust_accuracy']:.4f} on {pgd['n']}, AutoAttack {robust['robust_accuracy']:.4f} "
          f"(APGD-CE {robust['per_attack']['apgd_ce']:.4f}, {robust['wall_s']:.0f} s); "
          + (f"trained {record['train_time_s']:.0f} s ({record['epochs_run']} epochs, kept {record['kept_epoch']}, "
             f"{record['stop_reason']})" if "train_time_s" in record else f"model {args.model_in}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
