"""The robust benchmark's evaluation in fixed shards of the test set (``bench_robust.py
--shard-size S --shard-dir DIR``; run by hand, never collected by pytest).

A shard's result depends only on the model's weights, its images, the attack settings and its
index (its seeds are [seed, k] and [seed + 1, k]), never on the machine or on the run that did
it. So a complete AutoAttack that takes longer than one sitting on two cores is finished over
several runs, and the merged figure is the same as if one run had done every shard.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

LOG = logging.getLogger("secure_ai_mnist")
ATTACKS = ("clean", "apgd_ce", "apgd_t", "fab_t", "square")
SETTINGS = ("seed", "pgd_eps", "pgd_step_size", "pgd_steps", "pgd_restarts", "autoattack_iters", "autoattack_targets",
            "autoattack_restarts", "square_queries", "stability_limit", "attack_batch_size")
# Settings added after shards were committed, with the value every older shard was measured at.
SETTINGS_BEFORE = {"autoattack_restarts": 1}


def weights_sha256(model: Any) -> str:
    """SHA-256 over the model's weight arrays (dtype, shape and bytes, in order): equal for equal
    weights, whatever file (and save date) they came from."""
    digest = hashlib.sha256()
    for weight in model.get_weights():
        array = np.ascontiguousarray(weight)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def shard_settings(cfg: Any, size: int) -> dict[str, Any]:
    """Everything besides the weights and the images that a shard's result depends on."""
    return {"shard_size": size, **{key: getattr(cfg, key) for key in SETTINGS}}


def evaluate_shard(model: Any, x: np.ndarray, y: np.ndarray, cfg: Any, k: int) -> dict[str, Any]:
    """PGD (cfg's steps and restarts) and the complete AutoAttack (Square on every image still
    robust) on one shard; the stability check only on shard 0. Returns robust counts after each
    attack in turn (cumulative), the PGD count, bounds, times and checks."""
    from secure_ai_mnist.attacks import generate_pgd
    from secure_ai_mnist.autoattack import autoattack

    started = time.time()
    _, pgd = generate_pgd(model, x, y, cfg, np.random.default_rng([cfg.seed, k]), f"shard {k}")
    shard_cfg = dataclasses.replace(cfg, square_limit=0, stability_limit=cfg.stability_limit if k == 0 else 0)
    robust, info = autoattack(model, x, y, shard_cfg, np.random.default_rng([cfg.seed + 1, k]), f"shard {k}")
    counts = {name: round(acc * len(y)) for name, acc in info["per_attack"].items()}
    if counts.get("square", int(robust.sum())) != int(robust.sum()):
        raise AssertionError(f"shard {k}: Square's count {counts['square']} is not the robust mask's {robust.sum()}")
    return {"counts": {**counts, "pgd": round(pgd["robust_accuracy"] * len(y))}, "n": int(len(y)), "pgd": pgd,
            "autoattack_time_s": info["time_s"], "checks": info["checks"], "wall_s": round(time.time() - started, 1)}


def load_shard(path: Path, digest: str, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The shard result in ``path`` when it was measured on these weights and settings, else None
    (missing, or stale: then it is to be run again)."""
    if not path.exists():
        return None
    old = json.loads(path.read_text())
    if old.get("weights_sha256") == digest and {**SETTINGS_BEFORE, **old.get("settings", {})} == settings:
        return old
    LOG.warning("%s was measured on other weights or settings; it is run again", path.name)
    return None


def run_shards(model: Any, record: dict[str, Any], x: np.ndarray, y: np.ndarray, cfg: Any, args: Any,
               whole: dict[str, float], figure: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> int:
    """Evaluate every shard (or those in args.shards) not yet in args.shard_dir (none started
    after args.max_minutes), then, when all are there, write the merged result, with ``whole``
    (figures measured on the whole test set) and ``figure(merged AutoAttack)``'s record when
    given, to args.out. Returns the exit status."""
    from secure_ai_mnist.common import atomic_write_bytes
    from secure_ai_mnist.provenance import git_state

    if args.shard_dir is None or args.shard_size < 1:
        raise SystemExit("error: --shard-size needs a positive size and --shard-dir")
    size, digest, started = args.shard_size, weights_sha256(model), time.time()
    settings, count = shard_settings(cfg, size), math.ceil(len(y) / size)
    LOG.info("sharded evaluation: %d shards of %d images, weights %s", count, size, digest[:12])
    code = git_state()  # the code this process loaded: later commits made while it runs do not reach it
    paths = [args.shard_dir / f"shard_{k:03d}.json" for k in range(count)]
    chosen = set(args.shards or range(count))
    for k, path in enumerate(paths):
        if k not in chosen or load_shard(path, digest, settings) is not None:
            continue
        if args.max_minutes and (time.time() - started) / 60 >= args.max_minutes:
            LOG.info("%.0f minutes passed: no further shard started (rerun to go on)", args.max_minutes)
            break
        lo, hi = k * size, min((k + 1) * size, len(y))
        result = {"shard": k, "images": [lo, hi], "weights_sha256": digest, "settings": settings,
                  "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "code": code,
                  "host": {"cpus": os.cpu_count(), "machine": platform.machine()},
                  **evaluate_shard(model, x[lo:hi], y[lo:hi], cfg, k)}
        atomic_write_bytes(path, json.dumps(result, indent=2).encode())
        LOG.info("shard %d of %d done: %d of %d robust (%.0f s)", k + 1, count, result["counts"]["square"],
                 hi - lo, result["wall_s"])
    shards = [shard for path in paths if (shard := load_shard(path, digest, settings)) is not None]
    if len(shards) < count:
        LOG.info("%d of %d shards done; rerun the same command to finish", len(shards), count)
        return 0
    merged = merge_shards(shards, len(y))
    merged["checks"] = merged_checks(merged, whole)
    if figure is not None:
        merged["figure"] = figure(merged["autoattack"])
    atomic_write_bytes(args.out, json.dumps({"weights_sha256": digest, "training": record, **whole, **merged,
                                             "config": cfg.to_json()}, indent=2).encode())
    LOG.info("merged %d shards: AutoAttack %.4f, PGD %.4f on %d images", count,
             merged["autoattack"]["robust_accuracy"], merged["pgd_whitebox"]["robust_accuracy"], len(y))
    return 0


def merged_checks(merged: dict[str, Any], whole: dict[str, float]) -> dict[str, dict[str, Any]]:
    """The pipeline's attack-failure checks (secure_ai_mnist.checks) on the merged figures, with
    white-box FGSM on the whole test set (``whole``) as the strength order's first step."""
    from secure_ai_mnist.checks import attack_failure_checks

    own = {"fgsm": whole["fgsm_whitebox_accuracy"], "pgd": merged["pgd_whitebox"]["robust_accuracy"]}
    return attack_failure_checks("defense_robust", merged["autoattack"],
                                 {attack: {"defense_robust": {"defense_robust": acc}} for attack, acc in own.items()})


def merge_shards(shards: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """The whole test set's figures from its shards: counts summed, then divided by n; the
    headline is the share that survived every attack, with its Wilson interval."""
    from secure_ai_mnist.autoattack import wilson_ci95

    if sorted(s["shard"] for s in shards) != list(range(len(shards))) or sum(s["n"] for s in shards) != n:
        raise ValueError("the shards do not cover the test set exactly once")
    counts = {name: sum(s["counts"][name] for s in shards) for name in (*ATTACKS, "pgd")}
    first = min(shards, key=lambda s: s["shard"])
    bounds = [s["pgd"]["bound_check"] for s in shards]
    pgd = {**{key: first["pgd"][key] for key in ("eps", "step_size", "steps", "restarts", "random_start")},
           "n": n, "robust_accuracy": counts["pgd"] / n, "time_s": round(sum(s["pgd"]["time_s"] for s in shards), 1),
           "bound_check": {"max_linf": max(b["max_linf"] for b in bounds), "min_pixel": min(b["min_pixel"] for b in bounds),
                           "max_pixel": max(b["max_pixel"] for b in bounds)}}
    zero = sum(s["checks"]["zero_gradient_share"] * s["n"] for s in shards) / n
    autoattack = {"robust_accuracy": counts["square"] / n, "ci95": wilson_ci95(counts["square"], n), "n": n,
                  "per_attack": {name: counts[name] / n for name in ATTACKS},
                  "time_s": round(sum(s["autoattack_time_s"] for s in shards), 1),
                  "checks": {"zero_gradient_share": zero, "stability": first["checks"]["stability"]}}
    return {"pgd_whitebox": pgd, "autoattack": autoattack,
            "shards": {"count": len(shards), "size": first["settings"]["shard_size"],
                       "wall_s": round(sum(s["wall_s"] for s in shards), 1),
                       "runs": sorted({(s["code"].get("commit") or "?")[:7] for s in shards})}}
