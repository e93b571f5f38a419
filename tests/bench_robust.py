#!/usr/bin/env python3
"""Robust-profile benchmark (run by hand, never collected by pytest).

    python tests/bench_robust.py --out robust_bench.json [--restarts 3] [--pgd-limit 0] [--model-out M.keras]
        [--model-in M.keras --training-json T.json] [--figure F.png]
        [--shard-size 1000 --shard-dir DIR [--max-minutes M] [--shards 0,5]]
        [flags of the main script, e.g. --autoattack-targets 5 --square-limit 1000]

Trains the robust profile's defense (``--defense robust``) on the full MNIST training set,
every planned epoch (it stops with an error when its first epochs project past
``--robust-budget-min``), or loads ``--model-in``, then measures on the test set: clean
accuracy, white-box FGSM, white-box PGD-40 (eps 0.3, step 0.01, random starts; a sample
counts as robust only if it survives every start) and AutoAttack on the same images (APGD-CE,
APGD-T and FAB-T, then Square; with --square-limit N the headline is on the first N images and
the white-box figures on all of them are kept apart). Writes one JSON with the training record
and every number, and with --figure the robust accuracy against training compute beside the
published anchors.

With --shard-size S and --shard-dir DIR the PGD and AutoAttack evaluation runs on the test set
in fixed shards of S images (shard k: images k*S .. (k+1)*S - 1, its own seeds [seed, k]), one
JSON per shard in DIR, written when the shard is done. A shard whose JSON holds the same model
weights (SHA-256 of the weight arrays) and the same attack settings is not run again, so the
evaluation can be finished over several sessions or machines; --max-minutes starts no shard
after that many minutes, and --shards runs only the listed ones (a screen). When every shard is
there, --out gets the merged figures: a shard's result depends only on its images, the seed and
S, never on the machine or on which run did it.
The stability check (twice the iterations) runs on shard 0.
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


def parse_args() -> tuple[argparse.Namespace, list[str]]:
    """The benchmark's own flags, and the rest (flags of the main script)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--restarts", type=int, default=3, help="PGD random starts")
    parser.add_argument("--pgd-limit", type=int, default=0, help="test images for PGD (0 = all 10,000)")
    parser.add_argument("--model-out", type=Path, default=None, help="also save the trained model here")
    parser.add_argument("--model-in", type=Path, default=None, help="evaluate this saved model instead of training")
    parser.add_argument("--training-json", type=Path, default=None,
                        help="with --model-in: the JSON of the run that trained it, whose training record is kept")
    parser.add_argument("--figure", type=Path, default=None,
                        help="also draw robust accuracy against training compute, beside the published anchors")
    parser.add_argument("--shard-size", type=int, default=0,
                        help="evaluate in fixed shards of this many test images (0 = all at once)")
    parser.add_argument("--shard-dir", type=Path, default=None, help="with --shard-size: one JSON per shard here")
    parser.add_argument("--max-minutes", type=float, default=0.0,
                        help="with --shard-size: start no shard after this many minutes (0 = no limit)")
    parser.add_argument("--shards", type=lambda text: sorted({int(k) for k in text.split(",")}), default=None,
                        help="with --shard-size: run only these shards, e.g. 0,5 (a screen of a candidate "
                             "recipe on a hard and an easy part of the test set); no merge until all are there")
    return parser.parse_known_args()


def main() -> int:
    args, rest = parse_args()

    from secure_ai_mnist.attacks import generate_fgsm, generate_pgd
    from secure_ai_mnist.autoattack import autoattack
    from secure_ai_mnist.common import setup_logging
    from secure_ai_mnist.config import parse_config
    from secure_ai_mnist.data import load_mnist, sample_subset, to_model_input
    from secure_ai_mnist.evaluation import accuracy
    from secure_ai_mnist.model import configure_tensorflow

    cfg = parse_config(["--pgd-restarts", str(args.restarts), *rest])
    setup_logging("INFO")
    data = load_mnist(cfg)
    configure_tensorflow(cfg.threads)
    x_train, y_train = to_model_input(data.x_train), data.y_train
    x_test, y_test = to_model_input(data.x_test), data.y_test
    started = time.time()
    model, record, model_file = load_or_train(args, x_train, y_train, cfg)
    clean = accuracy(model, x_test, y_test, cfg.attack_batch_size)
    x_fgsm, _ = generate_fgsm(model, x_test, y_test, cfg, "test set vs robust defense")
    fgsm = accuracy(model, x_fgsm, y_test, cfg.attack_batch_size)
    if args.shard_size:
        from bench_robust_shards import run_shards

        draw = (lambda aa: robust_vs_compute_figure(record, aa, args.figure)) if args.figure and "epochs_run" in record \
            else None
        return run_shards(model, record, x_test, y_test, cfg, args,
                          {"clean_accuracy": clean, "fgsm_whitebox_accuracy": fgsm}, draw)
    rng = np.random.default_rng(cfg.seed)
    idx = sample_subset(len(y_test), args.pgd_limit, rng)
    _, pgd = generate_pgd(model, x_test[idx], y_test[idx], cfg, rng, "robust defense")
    evaluated = time.time()
    _, robust = autoattack(model, x_test[idx], y_test[idx], cfg, np.random.default_rng(cfg.seed + 1), "robust defense")
    robust["wall_s"] = round(time.time() - evaluated, 1)
    result = {"training": record, "clean_accuracy": clean, "fgsm_whitebox_accuracy": fgsm, "pgd_whitebox": pgd,
              "autoattack": {"iterations": cfg.autoattack_iters, "target_classes": cfg.autoattack_targets,
                             "apgd_ce_restarts": cfg.autoattack_restarts,
                             "square_queries": cfg.square_queries, "square_limit": cfg.square_limit, **robust},
              "wall_s": round(time.time() - started, 1), "config": cfg.to_json(),
              "host": {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version()}}
    if model_file:
        result["model_file"] = model_file
    if args.figure and "epochs_run" in record:
        result["figure"] = robust_vs_compute_figure(record, robust, args.figure)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"robust defense: clean {clean:.4f}, FGSM white-box {fgsm:.4f}, PGD-{cfg.pgd_steps} x{cfg.pgd_restarts} "
          f"{pgd['robust_accuracy']:.4f} on {pgd['n']}, AutoAttack {robust['robust_accuracy']:.4f} "
          f"(APGD-CE {robust['per_attack']['apgd_ce']:.4f}, {robust['wall_s']:.0f} s); "
          + (f"trained {record['train_time_s']:.0f} s ({record['epochs_run']} epochs, kept {record['kept_epoch']}, "
             f"{record['stop_reason']})" if "train_time_s" in record else f"model {args.model_in}"))
    return 0


def load_or_train(args: argparse.Namespace, x_train: np.ndarray, y_train: np.ndarray, cfg) -> tuple:
    """(model, training record, saved model file or None): ``--model-in`` with the record of
    ``--training-json``, or the robust defense trained now (saved to ``--model-out`` if given)."""
    import keras

    from secure_ai_mnist.defenses import train_robust
    from secure_ai_mnist.model import save_model

    if args.model_in:
        model, record = keras.models.load_model(args.model_in, safe_mode=True), {"loaded_from": str(args.model_in)}
        if args.training_json:
            record = {**json.loads(args.training_json.read_text())["training"], **record}
        return model, record, None
    model, record = train_robust(x_train, y_train, cfg, "defense_robust")
    if not args.model_out:
        return model, record, None
    # Saved before the hour of attacks, so an evaluation can be rerun (or redone) with --model-in
    # and --training-json (the record beside the model).
    model_file = save_model(model, args.model_out)
    args.model_out.with_suffix(".training.json").write_text(json.dumps({"training": record}, indent=2))
    return model, record, model_file


# AutoAttack (standard version) at eps 0.3 on MNIST, from the model tables of fra31/auto-attack,
# with each recipe's training compute: (label, epochs, attack steps per epoch, robust accuracy).
PUBLISHED = (("TRADES (SmallCNN, PGD-KL-40)", 100, 40, 0.9281), ("Madry et al. (PGD-40)", 83, 40, 0.8850),
             ("Wong et al. (FGSM-RS)", 10, 1, 0.8293))


def training_passes(record: dict) -> int:
    """Gradient passes per training image of the robust defense: an FGSM-RS epoch costs 2 (one
    attack step, one training step), a PGD-k epoch k + 1; the guard's held-out attacks are left out."""
    pgd = min(record["pgd_epochs"], record["epochs_run"])
    return 2 * (record["epochs_run"] - pgd) + (record["pgd_steps"] + 1) * pgd


def robust_vs_compute_figure(record: dict, robust: dict, path: Path) -> dict:
    """The figure of robust accuracy against training compute: this model (its AutoAttack
    headline) beside the published anchors. Returns the figure's path and its points."""
    from secure_ai_mnist.plots import plot_robust_vs_compute

    points = [{"label": label, "passes": epochs * (steps + 1), "accuracy": acc, "ours": False,
               "note": f"{epochs} epochs"} for label, epochs, steps, acc in PUBLISHED]
    network = {"seed": "seed CNN", "smallcnn": "SmallCNN", "smallcnn-silu": "SmallCNN (SiLU)"}[record.get("network", "seed")]
    points.append({"label": f"ours ({network})", "passes": training_passes(record), "accuracy": robust["robust_accuracy"],
                   "ours": True, "note": f"{record['train_time_s'] / 60:.0f} min on {os.cpu_count()} CPU cores, "
                                         f"{robust['n']} images"})
    return {"png": plot_robust_vs_compute(points, path), "points": points}


if __name__ == "__main__":
    sys.exit(main())
