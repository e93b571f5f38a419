"""Short-schedule screen of the robust recipe's training loss (run by hand, never collected by pytest):

    python tests/bench_trades_probe.py {ce,trades} --out probe.json

6 epochs (2 FGSM-RS, 4 PGD-5), one TensorFlow thread, the full MNIST training set; then clean
accuracy on all 10,000 test images, white-box FGSM on the first 2,000, and the complete
AutoAttack (top-3 targets, Square with 1,000 queries) on the first 500. A screen for
--robust-loss, not the benchmark: the full recipe is measured by bench_robust.py.
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

SCREEN = ["--robust-epochs", "6", "--robust-pgd-epochs", "4", "--threads", "1", "--robust-budget-min", "300",
          "--autoattack-targets", "3", "--square-queries", "1000", "--stability-limit", "0", "--square-limit", "0"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("loss", choices=("ce", "trades"), help="the robust defense's training loss")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args()

    from secure_ai_mnist.attacks import generate_fgsm
    from secure_ai_mnist.autoattack import autoattack
    from secure_ai_mnist.common import atomic_write_bytes, setup_logging
    from secure_ai_mnist.config import parse_config
    from secure_ai_mnist.data import load_mnist, to_model_input
    from secure_ai_mnist.defenses import train_robust
    from secure_ai_mnist.evaluation import accuracy
    from secure_ai_mnist.model import configure_tensorflow

    cfg = parse_config([*SCREEN, "--robust-loss", args.loss])
    setup_logging("INFO")
    configure_tensorflow(cfg.threads)
    data = load_mnist(cfg)
    x_test, y_test = to_model_input(data.x_test), data.y_test
    started = time.time()
    model, record = train_robust(to_model_input(data.x_train), data.y_train, cfg, "defense_robust")
    train_s = time.time() - started
    x_fgsm, _ = generate_fgsm(model, x_test[:2000], y_test[:2000], cfg, "screen")
    _, robust = autoattack(model, x_test[:500], y_test[:500], cfg, np.random.default_rng(1), "screen")
    result = {"loss": args.loss, "train_s": round(train_s, 1), "holdout_robust": record["holdout_robust"],
              "clean": accuracy(model, x_test, y_test, cfg.attack_batch_size),
              "fgsm_whitebox_2000": accuracy(model, x_fgsm, y_test[:2000], cfg.attack_batch_size),
              "aa_500": {key: robust[key] for key in ("robust_accuracy", "per_attack", "checks")}}
    atomic_write_bytes(args.out, json.dumps(result, indent=1).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
