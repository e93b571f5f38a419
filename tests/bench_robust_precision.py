"""Speed probe of --robust-precision (run by hand, never collected by pytest):

    python tests/bench_robust_precision.py --out probe.json [--train-images 12000]

Trains the robust defense (the default network) twice on the first --train-images MNIST
training images, once per precision, for two epochs: one FGSM-RS epoch and one PGD epoch (the
default --robust-pgd-steps), no eps ramp, 1,000 of those images held out for the guard. Writes
each epoch's training seconds (the guard's excluded), the guard's seconds and its held-out
numbers, and the host's bfloat16 flags. A speed probe, not a screen: a recipe trained in bf16
is measured by bench_robust.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--train-images", type=int, default=12000, help="first this many training images")
    args = parser.parse_args()

    from secure_ai_mnist.common import atomic_write_bytes, setup_logging
    from secure_ai_mnist.config import parse_config
    from secure_ai_mnist.data import load_mnist, to_model_input
    from secure_ai_mnist.defenses import train_robust
    from secure_ai_mnist.model import configure_tensorflow
    from secure_ai_mnist.provenance import git_state

    setup_logging("INFO")
    flags = Path("/proc/cpuinfo").read_text(errors="replace").split() if Path("/proc/cpuinfo").is_file() else []
    result = {"command": " ".join(["python", *sys.argv]), "commit": git_state()["commit"],
              "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "cpu_flags": {f: f in flags for f in ("avx512_bf16", "amx_bf16")}, "runs": {}}
    data = None
    for precision in ("fp32", "bf16"):
        cfg = parse_config(["--robust-epochs", "2", "--robust-pgd-epochs", "1", "--robust-ramp-epochs", "0",
                            "--robust-precision", precision])
        if data is None:
            configure_tensorflow(cfg.threads)
            data = load_mnist(cfg)
        _, record = train_robust(to_model_input(data.x_train[:args.train_images]), data.y_train[:args.train_images],
                                 cfg, "defense_robust")
        train_s = [round(e - g, 3) for e, g in zip(record["epoch_time_s"], record["guard_time_s"], strict=True)]
        result["runs"][precision] = {"method": record["method"], "train_s_per_epoch": train_s,
                                     "epoch_steps": record["epoch_steps"], "guard_time_s": record["guard_time_s"],
                                     "holdout_clean": record["holdout_clean"],
                                     "holdout_robust": record["holdout_robust"]}
    fp32, bf16 = (result["runs"][p]["train_s_per_epoch"] for p in ("fp32", "bf16"))
    result["speedup_per_epoch"] = [round(a / b, 2) for a, b in zip(fp32, bf16, strict=True)]
    atomic_write_bytes(args.out, json.dumps(result, indent=1).encode())
    print(json.dumps(result["speedup_per_epoch"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
