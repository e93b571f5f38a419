"""The run's outputs: the metrics summary assembled from the stage results, then Bandit, the
manifest, the metrics JSON and REPORT.md, written atomically. Reads the stage results only;
computes no attack, training or detection of its own."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .autoattack import ATTACKS
from .backdoor import attack_success_rate, backdoor_summary, describe_trigger, removal_summary, trigger_spec
from .cache import code_version
from .checks import sanity_checks
from .common import sha256_bytes, stage
from .config import Config
from .plots import plot_asr_bars
from .provenance import host_summary, library_versions, run_bandit, run_manifest
from .report import REPORT_FILENAME, results_table, write_report
from .stages import Runner
from .summary_schema import SCHEMA_VERSION, SUMMARY_FILENAME, write_summary


def model_entries(attacked: tuple[str, ...], r: dict[str, Any]) -> dict[str, Any]:
    """summary["models"]: each model's training record, saved file and evaluations."""
    evals = {"baseline": {**r["baseline_eval"]["evals"], "fgsm": r["baseline_fgsm_eval"]["metrics"]},
             "poisoned": r["poisoned_eval"]["evals"], "defense_fgsm": r["defense_fgsm_eval"],
             "poison_cleaned": r["poison_cleaned_eval"]["evals"],
             **{name: r[f"{name}_eval"] for name in attacked[3:]}}
    for name, metrics in r["robustness"]["pgd_evals"].items():
        evals[name]["pgd_whitebox"] = metrics
    return {name: {"training": r[name][1], "model_file": r["saved"]["files"][name], "eval": evals[name]}
            for name in evals}


def backdoor_entry(cfg: Config, r: dict[str, Any], evals: dict[str, Any]) -> dict[str, Any]:
    """summary["backdoor"]: attack settings, ASRs, trigger controls, detection, removal, sweep."""
    d, detection = r["data"], r["detection_scores"]
    backdoor = backdoor_summary(cfg, d["y_train"], r["poison"]["idx"], d["y_test"],
                                r["baseline_eval"]["triggered_pred"], r["poisoned_eval"]["triggered_pred"],
                                r["trigger_controls"]["png"])
    asr = backdoor["attack_success_rate"]
    asr["poison_cleaned"] = attack_success_rate(r["poison_cleaned_eval"]["triggered_pred"], d["y_test"], cfg.target_class)
    removal_png = plot_asr_bars({name: (evals[name]["clean"]["accuracy"], asr[name])
                                 for name in ("baseline", "poisoned", "poison_cleaned")},
                                cfg.output_dir / "images" / "poison_removal_asr.png")
    ours, runtime = detection[cfg.detector], r["runtime_check"]
    recovered = runtime["flag_rate_triggered"] is not None
    backdoor.update(
        trigger_controls=r["trigger_controls"]["controls"],
        detection={**detection, "png": r["detection_view"],
                   "goal_f1_at_least_0_9": ours["f1"] >= 0.9 and min(ours["precision"], ours["recall"]) >= 0.85,
                   "goal_control_at_most_0_1pct_flagged": detection["unpoisoned_control"]["flagged_share"] <= 0.001},
        removal=removal_summary(detection, r["poison_cleaned"][1], evals, asr, removal_png),
        runtime_check={**runtime,
                       "goal_triggered_at_least_95pct": runtime["flag_rate_triggered"] >= 0.95 if recovered else None,
                       "goal_clean_at_most_1pct": runtime["flag_rate_clean"] <= 0.01 if recovered else None},
        trigger_description=describe_trigger(trigger_spec(cfg)),
        matrix=r.get("matrix_scores") and {**r["matrix_scores"], "examples_png": r["trigger_controls"]["families_png"]},
        sweep=r.get("sweep") and {"epochs": r["sweep"]["epochs"], "png": r["sweep"]["png"], "rows": [
            {**row, "detection": scored} for row, scored in zip(r["sweep"]["rows"], r["sweep_detection"])]},
    )
    return backdoor


def autoattack_entry(cfg: Config, attacked: tuple[str, ...], r: dict[str, Any]) -> dict[str, Any]:
    """summary["autoattack"]: the ensemble's settings and each attacked model's result."""
    return {"attacks": ATTACKS, "eps": cfg.pgd_eps, "iterations": cfg.autoattack_iters,
            "target_classes": cfg.autoattack_targets, "apgd_ce_restarts": cfg.autoattack_restarts,
            "square_queries": cfg.square_queries,
            "square_limit": cfg.square_limit, "n_test_images": int(len(r["pgd_subset"])),
            "subset_sha256": sha256_bytes(r["pgd_subset"].tobytes()),
            "per_model": {name: r[f"autoattack:{name}"][1] for name in attacked}}


def build_summary(cfg: Config, attacked: tuple[str, ...], runner: Runner, started: float) -> dict[str, Any]:
    """The metrics JSON (without bandit, manifest and report path), from the stage results;
    ``attacked``: the models that got white-box PGD, AutoAttack and the transfer tables."""
    r, source = runner.results, runner.results["data"]["source"]
    models = model_entries(attacked, r)
    backdoor = backdoor_entry(cfg, r, {name: entry["eval"] for name, entry in models.items()})
    study = {k: v for k, v in r["robustness"].items() if k != "pgd_evals"}
    robust = autoattack_entry(cfg, attacked, r)
    fgsm_info = {"train_vs_baseline": r["fgsm_train"][1], "test_vs_baseline": r["fgsm_test"][1],
                 "test_vs_defense_whitebox": r["fgsm_test_defense"][1]}
    return {
        "schema_version": SCHEMA_VERSION,
        "generated_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": cfg.to_json(),
        "data": {"source": source.source, "sha256": source.sha256, "n_train": int(len(r["data"]["y_train"])),
                 "n_test": int(len(r["data"]["y_test"])), "n_train_available": int(len(source.y_train)),
                 "n_test_available": int(len(source.y_test))},
        "versions": library_versions(),
        "host": host_summary(),
        "models": models,
        "backdoor": backdoor,
        "fgsm": {"library": "compiled TensorFlow (equal to ART's FastGradientMethod, tested)"
                 if cfg.attack_backend == "compiled" else "adversarial-robustness-toolbox FastGradientMethod",
                 "norm": "inf", "targeted": False, "labels": "true labels", "eps": cfg.fgsm_eps, **fgsm_info},
        **study,
        "autoattack": robust,
        "sanity_checks": sanity_checks(models, study["transfer"]["accuracy"], study["accuracy_vs_eps"], cfg, robust),
        "cache": {"enabled": not cfg.no_cache, "reused": runner.cache.hits, "code_version": code_version(),
                  "stage_keys": dict(runner.keys)},
        "timings_s": {**runner.timings, "total": round(time.time() - started, 3)},
        "images": {"training_curves": r["saved"]["training_curves"],
                   "method1_poison_examples": r["trigger_controls"]["png"],
                   "trigger_families": r["trigger_controls"]["families_png"],
                   "method2_clean_vs_fgsm": r["baseline_fgsm_eval"]["png"],
                   "accuracy_vs_eps": study["accuracy_vs_eps"]["png"],
                   **{Path(v["confusion_png"]).stem: v["confusion_png"] for e in models.values() for v in e["eval"].values()}},
        "results_table": results_table(models, backdoor, robust),
        "datasets": r["datasets"],
    }


def write_outputs(summary: dict[str, Any], runner: Runner, started: float, command_line: list[str],
                  code: dict[str, Any]) -> None:
    """Bandit, the manifest of every written file, the metrics JSON and REPORT.md (all atomic)."""
    root = runner.dirs["root"]
    with stage("Bandit on this code base", runner.timings):
        summary["bandit"] = run_bandit()
    backdoor = summary["backdoor"]
    written = [*(entry["path"] for entry in runner.results["saved"]["files"].values()), *summary["images"].values(),
               *(entry["path"] for entry in runner.results["datasets"].values()),
               *([backdoor["runtime_check"]["file"]["path"]] if backdoor["runtime_check"]["file"] else []),
               *(v for v in (backdoor["detection"]["png"], backdoor["removal"]["png"],
                             (backdoor["sweep"] or {}).get("png"), (backdoor["matrix"] or {}).get("heatmap_png")) if v)]
    summary["manifest"] = run_manifest(started, command_line, summary["data"]["sha256"], root, written, code)
    summary["report"] = str(root / REPORT_FILENAME)
    write_summary(summary, root / SUMMARY_FILENAME)
    write_report(summary, root / REPORT_FILENAME)
