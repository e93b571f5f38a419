"""Studies (--seeds): the whole pipeline once per seed, each run in its own directory with its own
metrics JSON, and the spread of every headline metric across the seeds.

A per-seed run is the single run with that seed (same configuration, its own output directory),
so its numbers are the single run's. The spread covers everything the seed draws: the training
subset and order, the weights' initialisation, the poison indices and the attacks' random starts.
The 95% interval is Student's t interval of the mean over the seeds (n - 1 degrees of freedom);
with two or three seeds it is wide, and says so.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import LOG, atomic_write_bytes
from .config import Config
from .report import build_html

STUDY_FILENAME = "study_summary.json"
STUDY_REPORT = "STUDY.md"
STUDY_HTML = "study.html"
INTERVAL_METHOD = "Student's t 95% interval of the mean over seeds (n - 1 degrees of freedom)"


def seed_list(text: str) -> list[int]:
    """The seeds of --seeds, in the given order."""
    return [int(part) for part in text.split(",") if part.strip()]


def seed_config(cfg: Config, seed: int) -> Config:
    """The configuration of one seed's run: the study's, with that seed, in OUTPUT_DIR/seed_N/."""
    return dataclasses.replace(cfg, seed=seed, seeds="", workers=0, ray_address="", output_dir=cfg.output_dir / f"seed_{seed}")


def _get(tree: Any, *path: str) -> float | None:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return float(tree) if isinstance(tree, (int, float)) and not isinstance(tree, bool) else None


def headline_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The headline numbers of one run's metrics JSON, by a stable name; a metric the run did not
    measure is left out."""
    models, backdoor = summary.get("models", {}), summary.get("backdoor", {})
    detection = backdoor.get("detection", {})
    selected = detection.get("selected", "")
    named: dict[str, float | None] = {}
    for name in models:
        for test_set in ("clean", "fgsm_transfer_from_baseline", "fgsm_whitebox", "pgd_whitebox"):
            named[f"{name}.{test_set}_accuracy"] = _get(models, name, "eval", test_set, "accuracy")
        if name == "baseline":  # the seed's FGSM test set is crafted on the baseline: white-box for it
            named["baseline.fgsm_whitebox_accuracy"] = _get(models, name, "eval", "fgsm", "accuracy")
        named[f"{name}.autoattack_accuracy"] = _get(summary, "autoattack", "per_model", name, "robust_accuracy")
    for name in ("poisoned", "poison_cleaned"):
        named[f"backdoor.asr_{name}"] = _get(backdoor, "attack_success_rate", name)
    for key in ("precision", "recall", "f1"):
        named[f"detection.{selected}.{key}"] = _get(detection, selected, key)
    named["detection.control_flagged_share"] = _get(detection, "unpoisoned_control", "flagged_share")
    return {name: value for name, value in named.items() if value is not None}


def t_quantile_975(df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def spread(values: list[float]) -> dict[str, Any]:
    """n, mean, SD (n - 1), min, max and the 95% t interval of the mean (None for n < 2)."""
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    half = t_quantile_975(n - 1) * sd / math.sqrt(n) if n > 1 else None
    return {"n": n, "mean": mean, "sd": sd, "min": min(values), "max": max(values),
            "ci95": [mean - half, mean + half] if half is not None else None}


def aggregate(per_seed: dict[int, dict[str, float]]) -> dict[str, Any]:
    """For every headline metric that every seed measured: its per-seed values and ``spread``."""
    common = set.intersection(*(set(m) for m in per_seed.values())) if per_seed else set()
    return {name: {"per_seed": {str(seed): metrics[name] for seed, metrics in per_seed.items()},
                   **spread([metrics[name] for metrics in per_seed.values()])}
            for name in sorted(common)}


def study_lines(study: dict[str, Any]) -> list[str]:
    """The study section of STUDY.md: one row per headline metric, in percent."""
    rows = [f"| {name} | {100 * m['mean']:.2f} | {100 * m['sd']:.2f} | {100 * m['min']:.2f} | {100 * m['max']:.2f} | "
            + (f"{100 * m['ci95'][0]:.2f} to {100 * m['ci95'][1]:.2f}" if m["ci95"] else "n/a") + " |"
            for name, m in study["metrics"].items()]
    return ["## Study across seeds", "",
            f"Seeds {', '.join(map(str, study['seeds']))}; each seed's run is in `seed_N/` with its own "
            f"`metrics_summary_tasks5_6_7.json` and `REPORT.md`. Interval: {study['interval_method']}. All in %.", "",
            "| metric | mean | SD | min | max | 95% interval |", "|---|---|---|---|---|---|", *rows, ""]


def plot_study(study: dict[str, Any], path: Path) -> str:
    """Per-seed points and the 95% interval of every headline metric (Agg, saved, closed)."""
    from .plots import _pyplot, save_figure

    names = list(study["metrics"])
    fig, ax = _pyplot().subplots(figsize=(8, 0.35 * len(names) + 1.2))
    for row, name in enumerate(names):
        metric = study["metrics"][name]
        ax.scatter([100 * v for v in metric["per_seed"].values()], [row] * metric["n"], s=14, color="tab:blue")
        if metric["ci95"]:
            ax.plot([100 * v for v in metric["ci95"]], [row, row], color="tab:red", lw=1)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("% (points: seeds; line: 95% t interval of the mean)")
    ax.set_title(f"Headline metrics across {len(study['seeds'])} seeds")
    return save_figure(fig, path)


def pipeline_task(job: tuple[Config, list[str]]) -> dict[str, Any]:
    """One seed's whole pipeline run (in this process or in a Ray worker): its headline metrics,
    where its metrics JSON was written, that file's SHA-256 and the host that wrote it."""
    import platform

    import secure_ai_mnist_main  # the entry script; Ray workers import it from the project root

    from .common import setup_logging, sha256_file
    from .summary_schema import SUMMARY_FILENAME

    one, argv = job
    setup_logging(one.log_level)
    summary = secure_ai_mnist_main.run_pipeline(one, argv)
    path = one.output_dir / SUMMARY_FILENAME
    return {"seed": one.seed, "headlines": headline_metrics(summary), "summary_path": str(path),
            "summary_sha256": sha256_file(path), "host": platform.node()}


def reached_driver(result: dict[str, Any]) -> bool:
    """Whether the run's metrics JSON is on this machine's disk, the very file the task wrote."""
    from .common import sha256_file

    path = Path(result["summary_path"])
    return path.is_file() and sha256_file(path) == result["summary_sha256"]


def run_study(cfg: Config, argv: list[str],
              work: Callable[[tuple[Config, list[str]]], dict[str, Any]] = pipeline_task) -> dict[str, Any]:
    """``work`` (one pipeline run per seed of --seeds) serially here, or as Ray tasks with
    --workers / --ray-address; then study_summary.json, STUDY.md, study.html and the figure in
    --output-dir (each written atomically). Returns the study record."""
    from .executor import run_tasks, uses_ray

    seeds = seed_list(cfg.seeds)
    LOG.info("== study: seeds %s, each in %s/seed_N", seeds, cfg.output_dir)
    results = run_tasks(work, [(seed_config(cfg, seed), argv) for seed in seeds], cfg.workers, cfg.ray_address)
    study = {"seeds": seeds, "interval_method": INTERVAL_METHOD,
             "metrics": aggregate({r["seed"]: r["headlines"] for r in results}),
             "runs": {str(r["seed"]): {"summary": r["summary_path"], "sha256": r["summary_sha256"], "host": r["host"],
                                       "on_driver_disk": reached_driver(r)} for r in results},
             "executor": "ray" if uses_ray(cfg.workers, cfg.ray_address) else "serial"}
    for seed, run in study["runs"].items():
        if not run["on_driver_disk"]:
            LOG.warning("seed %s: its outputs stayed on %s (%s); the study holds its numbers", seed, run["host"],
                        run["summary"])
    study["figure"] = plot_study(study, cfg.output_dir / "images" / "study_seeds.png")
    atomic_write_bytes(cfg.output_dir / STUDY_FILENAME, json.dumps(study, indent=2).encode())
    text = "\n".join(["# secure-ai-mnist study", "", *study_lines(study), "![study](images/study_seeds.png)", ""])
    atomic_write_bytes(cfg.output_dir / STUDY_REPORT, text.encode())
    atomic_write_bytes(cfg.output_dir / STUDY_HTML, build_html(text, cfg.output_dir).encode())
    LOG.info("wrote %s (%d seeds, %d metrics)", cfg.output_dir / STUDY_FILENAME, len(seeds), len(study["metrics"]))
    return study
