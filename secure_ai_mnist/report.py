"""The metrics summary: its schema, validation, headline table and atomic write."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess  # nosec B404 - runs git and bandit with fixed argument lists, never a shell
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .common import NUM_CLASSES, atomic_write_bytes, sha256_file
from .config import Config
from .detection import DETECTORS
from .report_backdoor import backdoor_conclusions, controls_lines, detection_lines, matrix_lines, runtime_line
from .report_backdoor import image_link as _image
from .report_backdoor import pct as _pct

DETECTION_KEYS = {"flagged", "true_positives", "false_positives", "precision", "recall", "f1", "uses_ground_truth"}
REMOVAL_KEYS = {"detector", "method", "removed", "clean_accuracy", "attack_success_rate", "cost_s"}

SCHEMA_VERSION = 4
SUMMARY_FILENAME = "metrics_summary_tasks5_6_7.json"


REQUIRED_SUMMARY_KEYS = {
    "schema_version": int,
    "generated_utc": str,
    "config": dict,
    "data": dict,
    "versions": dict,
    "host": dict,
    "models": dict,
    "backdoor": dict,
    "fgsm": dict,
    "pgd": dict,
    "transfer": dict,
    "accuracy_vs_eps": dict,
    "autoattack": dict,
    "sanity_checks": dict,
    "cache": dict,
    "timings_s": dict,
    "images": dict,
    "results_table": str,
}


REQUIRED_EVALS = {
    "baseline": ("clean", "triggered", "fgsm", "pgd_whitebox"),
    "poisoned": ("clean", "triggered", "pgd_whitebox"),
    "poison_cleaned": ("clean", "triggered"),
    "defense_fgsm": ("clean", "fgsm_transfer_from_baseline", "fgsm_whitebox", "pgd_whitebox"),
}


REQUIRED_METRICS = ("n", "loss", "accuracy", "inference_time_total_s", "inference_time_per_sample_ms",
                    "confusion_matrix", "per_class_accuracy", "confusion_png")


def validate_summary(summary: dict[str, Any]) -> None:
    """Raise ValueError naming the first missing or mistyped key of the metrics JSON."""
    for key, kind in REQUIRED_SUMMARY_KEYS.items():
        if not isinstance(summary.get(key), kind):
            raise ValueError(f"summary[{key!r}] missing or not {kind.__name__}")
    if summary["schema_version"] != SCHEMA_VERSION:
        raise ValueError(f"schema_version {summary['schema_version']} != {SCHEMA_VERSION}")
    for model_name, sets in REQUIRED_EVALS.items():
        model = summary["models"].get(model_name)
        if not isinstance(model, dict) or not {"training", "model_file", "eval"} <= model.keys():
            raise ValueError(f"summary['models'][{model_name!r}] incomplete")
        for set_name in sets:
            metrics = model["eval"].get(set_name)
            if not isinstance(metrics, dict) or not set(REQUIRED_METRICS) <= metrics.keys():
                raise ValueError(f"summary['models'][{model_name!r}]['eval'][{set_name!r}] incomplete")
            matrix = np.asarray(metrics["confusion_matrix"])
            if matrix.shape != (NUM_CLASSES, NUM_CLASSES) or int(matrix.sum()) != metrics["n"]:
                raise ValueError(f"confusion matrix of {model_name}/{set_name} does not match n")
            if not 0.0 <= metrics["accuracy"] <= 1.0:
                raise ValueError(f"accuracy of {model_name}/{set_name} outside [0, 1]")
    for model_name, result in summary["autoattack"].get("per_model", {}).items():
        if not {"robust_accuracy", "ci95", "n", "per_attack", "time_s"} <= result.keys():
            raise ValueError(f"summary['autoattack']['per_model'][{model_name!r}] incomplete")
        if not 0.0 <= result["robust_accuracy"] <= 1.0:
            raise ValueError(f"AutoAttack accuracy of {model_name} outside [0, 1]")
    backdoor = summary["backdoor"]
    for key in ("attack_success_rate", "poison_count", "target_class", "trigger_controls", "detection", "removal",
                "runtime_check", "sweep"):
        if key not in backdoor:
            raise ValueError(f"summary['backdoor'][{key!r}] missing")
    detection = backdoor["detection"]
    for detector in (*DETECTORS, "random_filter"):
        entry = detection.get(detector, {})
        if not DETECTION_KEYS <= entry.keys() or (detector != "random_filter" and "time_s" not in entry):
            raise ValueError(f"summary['backdoor']['detection'][{detector!r}] incomplete")
        if not all(0.0 <= entry[k] <= 1.0 for k in ("precision", "recall", "f1")):
            raise ValueError(f"detection metrics of {detector} outside [0, 1]")
        if entry["uses_ground_truth"] is not False:
            raise ValueError(f"detector {detector} is marked as using the ground truth")
    if detection.get("selected") not in DETECTORS or detection.get("activations", {}).get("layer") != "penultimate":
        raise ValueError("summary['backdoor']['detection']: no selected detector, or not the penultimate layer")
    if not {"flagged", "suspicious_classes"} <= detection.get("unpoisoned_control", {}).keys():
        raise ValueError("summary['backdoor']['detection']['unpoisoned_control'] incomplete")
    for model_name, rates in backdoor["trigger_controls"].items():
        if "trained_trigger" not in rates or len(rates) < 2:
            raise ValueError(f"trigger controls of {model_name} incomplete")
    if not REMOVAL_KEYS <= backdoor["removal"].keys():
        raise ValueError("summary['backdoor']['removal'] incomplete")
    if not {"flag_rate_triggered", "flag_rate_clean", "method", "trigger_recovered"} <= backdoor["runtime_check"].keys():
        raise ValueError("summary['backdoor']['runtime_check'] incomplete")
    sweep = backdoor["sweep"]
    if sweep is not None and not all({"poison_count", "trigger_size", "clean_accuracy", "attack_success_rate",
                                      "detection"} <= row.keys() for row in sweep.get("rows") or [{}]):
        raise ValueError("summary['backdoor']['sweep'] rows incomplete")


def library_versions() -> dict[str, str]:
    from importlib import metadata

    names = ("tensorflow", "tensorflow-cpu", "keras", "adversarial-robustness-toolbox", "numpy",
             "scikit-learn", "matplotlib", "seaborn")
    versions = {"python": platform.python_version()}
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def host_summary() -> dict[str, Any]:
    return {"platform": platform.platform(), "machine": platform.machine(), "cpu_count": os.cpu_count()}


def results_table(models: dict[str, Any], backdoor: dict[str, Any], autoattack: dict[str, Any] | None = None) -> str:
    """Markdown table of the headline numbers, built only from measured values."""
    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.2f}%"

    def acc(model: str, test_set: str) -> float | None:
        return models[model]["eval"].get(test_set, {}).get("accuracy")

    asr = backdoor["attack_success_rate"]
    rows = [
        ("baseline", acc("baseline", "clean"), acc("baseline", "triggered"), asr["baseline"],
         None, acc("baseline", "fgsm"), acc("baseline", "pgd_whitebox")),
        ("poisoned", acc("poisoned", "clean"), acc("poisoned", "triggered"), asr["poisoned"], None, None,
         acc("poisoned", "pgd_whitebox")),
        *([("poison_cleaned", acc("poison_cleaned", "clean"), acc("poison_cleaned", "triggered"),
            asr.get("poison_cleaned"), None, None, None)] if "poison_cleaned" in models else []),
        ("defense_fgsm", acc("defense_fgsm", "clean"), None, None, acc("defense_fgsm", "fgsm_transfer_from_baseline"),
         acc("defense_fgsm", "fgsm_whitebox"), acc("defense_fgsm", "pgd_whitebox")),
    ]
    lines = [
        "| model | clean acc | triggered acc | backdoor ASR | FGSM acc (crafted on baseline, transfer) "
        "| FGSM acc (white-box) | PGD acc (white-box) | AutoAttack acc (white-box + Square) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in models.items():
        if name.startswith("defense_") and name != "defense_fgsm":
            rows.append((name, acc(name, "clean"), None, None, acc(name, "fgsm_transfer_from_baseline"),
                         acc(name, "fgsm_whitebox"), acc(name, "pgd_whitebox")))
    robust = {name: r["robust_accuracy"] for name, r in (autoattack or {}).get("per_model", {}).items()}
    for name, *values in rows:
        lines.append("| " + " | ".join([name, *(pct(v) for v in values), pct(robust.get(name))]) + " |")
    return "\n".join(lines)


def sanity_checks(
    models: dict[str, Any], transfer: dict[str, dict[str, dict[str, float]]], curves: dict[str, Any], cfg: Config,
    autoattack: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Checks from the adversarial-evaluation literature; passed is True, False, or None (not applicable).

    A False means a robustness number in this run is not to be trusted.
    """
    checks: dict[str, dict[str, Any]] = {}
    same_eps = abs(cfg.pgd_eps - cfg.fgsm_eps) < 1e-12
    for name in transfer["pgd"]:
        pgd_acc, fgsm_acc = transfer["pgd"][name][name], transfer["fgsm"][name][name]
        checks[f"pgd_not_weaker_than_fgsm_{name}"] = {
            "description": f"{name}: white-box PGD accuracy <= white-box FGSM accuracy on the same images and eps",
            "passed": (pgd_acc <= fgsm_acc) if same_eps else None,
            "pgd_accuracy": pgd_acc, "fgsm_accuracy": fgsm_acc,
        }
    for attack, table in transfer.items():
        for target in table:
            whitebox = table[target][target]
            transferred = {source: table[source][target] for source in table if source != target}
            checks[f"whitebox_not_weaker_than_transfer_{attack}_{target}"] = {
                "description": f"{target}: {attack.upper()} crafted on the model itself is at least as strong as "
                               f"{attack.upper()} crafted on any other model",
                "passed": all(whitebox <= acc for acc in transferred.values()),
                "whitebox_accuracy": whitebox, "transfer_accuracy": transferred,
            }
    defense = models["defense_fgsm"]["eval"]
    wb, moved = defense["fgsm_whitebox"]["accuracy"], defense["fgsm_transfer_from_baseline"]["accuracy"]
    checks["whitebox_not_weaker_than_transfer_full_test_set_defense_fgsm"] = {
        "description": "defense_fgsm on the full test set: FGSM crafted on the model itself is at least as strong "
                       "as FGSM transferred from the baseline",
        "passed": wb <= moved, "whitebox_accuracy": wb, "transfer_accuracy": moved,
    }
    if 1.0 in curves["eps"]:
        at_one = {name: accs[curves["eps"].index(1.0)] for name, accs in curves["pgd"].items()}
        checks["accuracy_near_chance_at_eps_1"] = {
            "description": "at eps 1.0 the attacker can draw any image, so PGD accuracy must fall to chance "
                           "(<= 0.15) or below",
            "passed": all(acc <= 0.15 for acc in at_one.values()), "pgd_accuracy": at_one,
        }
    checks["eps_bound_and_pixel_range"] = {
        "description": "every generated adversarial set stays within its eps (L-inf) and inside [0, 1]; "
                       "the run stops with an error otherwise",
        "passed": True,
    }
    tolerance = 1 / max(curves["n"], 1)
    checks["eps_curve_monotone"] = {
        "description": "white-box PGD accuracy does not rise with eps (one image of slack per step)",
        "passed": all(b <= a + tolerance for accs in curves["pgd"].values() for a, b in zip(accs, accs[1:])),
        "pgd_accuracy": curves["pgd"],
    }
    if autoattack:
        for name, result in autoattack["per_model"].items():
            checks.update(attack_failure_checks(name, result, transfer))
    return checks


def attack_failure_checks(name: str, result: dict[str, Any], transfer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Indicators of attack failure (Carlini et al. 2019; Pintor et al. 2022) for one model's
    AutoAttack result: attack strength order, Square against the white-box attacks, convergence
    when the iterations double, and zero input gradients. passed None = not applicable."""
    order = {"fgsm": transfer["fgsm"][name][name], "pgd": transfer["pgd"][name][name],
             "apgd_ce": result["per_attack"]["apgd_ce"], "autoattack": result["robust_accuracy"]}
    values = list(order.values())
    checks = {f"attack_strength_order_{name}": {
        "description": f"{name}: FGSM >= PGD >= APGD-CE >= AutoAttack accuracy on the same images",
        "passed": all(a >= b for a, b in zip(values, values[1:])), **{f"{k}_accuracy": v for k, v in order.items()}}}
    square = result["per_attack"].get("square")
    if square is not None:
        drop = square["accuracy_before"] - square["accuracy_after"]
        checks[f"square_not_stronger_than_whitebox_{name}"] = {
            "description": f"{name}: black-box Square lowers the white-box attacks' accuracy by at most 0.5 points "
                           "(more means the gradients mislead the white-box attacks)",
            "passed": None if square["accuracy_before"] == 0 else drop <= 0.005, "drop_points": 100 * drop,
            "n": square["n"]}
    stability = result["checks"]["stability"]
    if stability["n"]:
        move = abs(stability["accuracy"][1] - stability["accuracy"][0])
        checks[f"attack_converged_{name}"] = {
            "description": f"{name}: doubling the APGD iterations changes the robust accuracy by < 0.5 points",
            "passed": move < 0.005, "change_points": 100 * move, **stability}
    share = result["checks"]["zero_gradient_share"]
    checks[f"no_zero_gradients_{name}"] = {
        "description": f"{name}: under 1% of the points have an all-zero input gradient (gradient masking)",
        "passed": share < 0.01, "zero_gradient_share": share}
    return checks


def write_summary(summary: dict[str, Any], path: Path) -> None:
    """Validate, then write the metrics JSON atomically."""
    validate_summary(summary)
    atomic_write_bytes(path, (json.dumps(summary, indent=2, allow_nan=False) + "\n").encode())


PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _utc(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def _run_tool(args: list[str], timeout: float) -> subprocess.CompletedProcess | None:
    """Run a fixed command in the project root; None when it cannot run at all."""
    try:
        return subprocess.run(args, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout,  # nosec B603
                              check=False)
    except (OSError, subprocess.SubprocessError):
        return None


def git_state(outputs: Path | None = None) -> dict[str, Any]:
    """The code's git commit and whether the working tree had uncommitted changes (None outside
    git). ``outputs`` (the run's output directory) is left out: the run itself rewrites it."""
    git = shutil.which("git")
    if git is None:
        return {"commit": None, "dirty": None, "note": "git not installed"}
    head = _run_tool([git, "rev-parse", "HEAD"], 10)
    if head is None or head.returncode != 0:
        return {"commit": None, "dirty": None, "note": "not a git checkout"}
    exclude = []
    if outputs is not None:
        with contextlib.suppress(ValueError):
            exclude = [f":(exclude){outputs.resolve().relative_to(PROJECT_ROOT)}"]
    status = _run_tool([git, "status", "--porcelain", "--untracked-files=no", "--", ".", *exclude], 10)
    dirty = None if status is None or status.returncode != 0 else bool(status.stdout.strip())
    return {"commit": head.stdout.strip(), "dirty": dirty}


def run_bandit() -> dict[str, Any]:
    """Bandit on this code base with the project's .bandit config: issue counts by severity,
    or available False when Bandit is not installed."""
    try:
        from importlib import metadata

        version = metadata.version("bandit")
    except metadata.PackageNotFoundError:
        return {"available": False, "note": "bandit is not installed; run `pip install bandit` to include it"}
    start = time.perf_counter()
    result = _run_tool([sys.executable, "-m", "bandit", "-q", "-r", ".", "-c", ".bandit", "-f", "json"], 300)
    elapsed = round(time.perf_counter() - start, 3)
    if result is None or not result.stdout.strip():
        return {"available": True, "version": version, "ran": False, "note": "bandit did not produce a report"}
    try:
        findings = json.loads(result.stdout)
    except ValueError:
        return {"available": True, "version": version, "ran": False, "note": "bandit output was not JSON"}
    issues = findings.get("results", [])
    severity = {level: sum(1 for i in issues if i.get("issue_severity") == level) for level in ("HIGH", "MEDIUM", "LOW")}
    totals = findings.get("metrics", {}).get("_totals", {})
    return {"available": True, "version": version, "ran": True, "command": "bandit -q -r . -c .bandit",
            "issues": len(issues), "by_severity": severity, "lines_of_code": totals.get("loc"),
            "time_s": elapsed,
            "findings": [f"{i.get('filename')}:{i.get('line_number')} {i.get('test_id')} {i.get('issue_text')}"
                         for i in issues[:20]]}


def run_manifest(started: float, command_line: list[str], data_sha256: dict[str, str], root: Path,
                 files: list[str], code: dict[str, Any]) -> dict[str, Any]:
    """Who ran what, when, on which code (``git_state`` read when the run started: a commit made
    during a long run is not the code that ran) and data, and the SHA-256 of every file written."""
    written = {}
    for name in sorted(set(files)):
        path = Path(name)
        if path.is_file():
            with contextlib.suppress(ValueError):
                name = str(path.relative_to(root))
            written[name] = sha256_file(path)
    return {"started_utc": _utc(started), "finished_utc": _utc(time.time()), "command_line": command_line,
            "working_directory": str(Path.cwd()), "code": code, "data_sha256": data_sha256,
            "files_sha256": written, "log_file": "run.log (run_failed.log when the run fails)"}


REPORT_FILENAME = "REPORT.md"


def most_confused(matrix: list[list[int]], top: int = 3) -> list[tuple[int, int, int]]:
    """The ``top`` largest off-diagonal cells as (true class, predicted class, count), count > 0."""
    cells = [(count, t, p) for t, row in enumerate(matrix) for p, count in enumerate(row) if t != p and count > 0]
    return [(t, p, count) for count, t, p in sorted(cells, key=lambda c: (-c[0], c[1], c[2]))[:top]]


def backdoor_strength(asr: float) -> str:
    """Words for an ASR: strong (>= 90%), partial (>= 50%), weak (>= 10%), absent."""
    return "strong" if asr >= 0.9 else "partial" if asr >= 0.5 else "weak" if asr >= 0.1 else "absent"


# The seed report's deliverables, in its order: (what it shows, image key or dataset key).
SEED_FIGURES = (
    ("seed: baseline confusion matrix, clean test set", "baseline_confusion_clean"),
    ("seed: baseline confusion matrix, triggered test set", "baseline_confusion_triggered"),
    ("seed: baseline confusion matrix, FGSM test set", "baseline_confusion_fgsm"),
    ("seed: defense confusion matrix, clean test set", "defense_confusion_clean"),
    ("seed: defense confusion matrix, FGSM test set (crafted on the baseline)", "defense_confusion_fgsm"),
    ("defense confusion matrix, FGSM crafted on the defense itself (white-box)", "defense_confusion_fgsm_whitebox"),
    ("seed method 1 (data poisoning): poisoned training examples", "method1_poison_examples"),
    ("seed method 2 (FGSM): clean vs adversarial examples", "method2_clean_vs_fgsm"),
)
SEED_DATASETS = (
    ("seed deliverable (d): FGSM test set crafted on the baseline", "fgsm_test_vs_baseline"),
    ("FGSM test set crafted on the defense (white-box)", "fgsm_test_vs_defense"),
    ("triggered test set (backdoor)", "triggered_test"),
    ("poisoned training set: poison indices, original and new labels, trigger", "poisoned_train"),
    ("FGSM training set crafted on the baseline (--export-train-sets)", "fgsm_train_vs_baseline"),
)


def deliverable_files(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """(what, path relative to the output directory) for the seed's figures and the datasets this run wrote."""
    rows = [(what, f"images/{Path(summary['images'][key]).name}") for what, key in SEED_FIGURES
            if key in summary["images"]]
    datasets = summary.get("datasets", {})
    return rows + [(what, f"datasets/{Path(datasets[key]['path']).name}") for what, key in SEED_DATASETS
                   if key in datasets]


def build_report(summary: dict[str, Any], root: Path, threat_model: str | None) -> str:
    """REPORT.md text. Every number is read from ``summary`` (the run's metrics JSON); every
    sentence that judges a number states the rule it applies."""
    models, backdoor, manifest = summary["models"], summary["backdoor"], summary.get("manifest", {})
    code = manifest.get("code", {})
    img = summary["images"]
    lines = [
        "# secure-ai-mnist run report",
        "",
        f"Generated from `{SUMMARY_FILENAME}` of the run that started {manifest.get('started_utc', 'n/a')} and "
        f"finished {manifest.get('finished_utc', 'n/a')}: git commit `{code.get('commit') or 'unknown'}`"
        + (" (with uncommitted changes)" if code.get("dirty") else "") + ", command "
        f"`{' '.join(manifest.get('command_line', []))}`. "
        f"Data: {summary['data']['n_train']} training and {summary['data']['n_test']} test images of MNIST "
        f"({summary['data']['source']}). Nothing below is typed in by hand: it is all read from that JSON.",
        "",
        "## 0. Deliverables map",
        "",
        "| deliverable | file |",
        "|---|---|",
        f"| metrics summary (all numbers, run manifest) | `{SUMMARY_FILENAME}` |",
        "| this report | `REPORT.md` |",
        "| run log with timestamps | `run.log` |",
        *(f"| model: {name} | `models/{Path(entry['model_file']['path']).name}` |" for name, entry in models.items()),
        f"| figures | `images/` ({len(img)} PNG files, each listed with its SHA-256 in the manifest) |",
        *(f"| {what} | `{rel}` |" for what, rel in deliverable_files(summary)),
        "| threat model (STRIDE) | `THREAT_MODEL.md` in the repository, repeated in section 3 |",
        "",
        "## 1. Repositories and environment",
        "",
        f"- Code: git commit `{code.get('commit') or 'unknown'}`; library versions: "
        + ", ".join(f"{k} {v}" for k, v in summary["versions"].items()) + ".",
        f"- Host: {summary['host'].get('platform')}, {summary['host'].get('cpu_count')} CPUs.",
        "- Data files (SHA-256 verified against the hashes held in the code): "
        + ", ".join(f"`{name}` {digest[:16]}..." for name, digest in summary["data"]["sha256"].items()) + ".",
        f"- Wall time of the run: {summary['timings_s']['total']:.0f} s.",
        "",
        "## 2. Clean metrics",
        "",
        "| model | clean accuracy | loss | inference (ms per image) | training time (s) |",
        "|---|---|---|---|---|",
    ]
    for name, entry in models.items():
        clean = entry["eval"]["clean"]
        lines.append(f"| {name} | {_pct(clean['accuracy'])} | {clean['loss']:.4f} | "
                     f"{clean['inference_time_per_sample_ms']:.3f} | {entry['training'].get('train_time_s', 0):.0f} |")
    confused = most_confused(models["baseline"]["eval"]["clean"]["confusion_matrix"])
    lines += [
        "",
        "Most confused classes of the baseline on the clean test set (true -> predicted, count): "
        + (", ".join(f"{t} -> {p} ({c})" for t, p, c in confused) or "none") + ".",
        "",
        _image(root, img["baseline_confusion_clean"], "baseline confusion matrix"),
        "",
        _image(root, img["training_curves"], "training curves"),
        "",
        "## 3. Threat model (STRIDE) and Bandit",
        "",
    ]
    if threat_model:
        body = threat_model.split("\n", 1)[1] if threat_model.startswith("# ") else threat_model
        lines += [body.strip(), ""]
    else:
        lines += ["THREAT_MODEL.md was not found beside the code, so it is not repeated here.", ""]
    bandit = summary.get("bandit", {})
    if not bandit.get("available"):
        lines.append(f"Bandit: not run in this run ({bandit.get('note', 'not installed')}).")
    elif not bandit.get("ran"):
        lines.append(f"Bandit {bandit.get('version')}: could not run ({bandit.get('note')}).")
    else:
        sev = bandit["by_severity"]
        lines.append(f"Bandit {bandit['version']} (`{bandit['command']}`, run during this run): {bandit['issues']} "
                     f"issues (high {sev['HIGH']}, medium {sev['MEDIUM']}, low {sev['LOW']}) in "
                     f"{bandit.get('lines_of_code')} lines of code.")
        lines += [f"- {finding}" for finding in bandit.get("findings", [])]
    fgsm, pgd_cfg = summary["fgsm"], summary["config"]
    lines += [
        "",
        "## 4. Adversarial data generation",
        "",
        f"- Backdoor ({backdoor['family']}): {backdoor['poison_count']} training images "
        f"({_pct(backdoor['poison_fraction'])}) get {backdoor['trigger_description']}"
        f"{'' if backdoor['trigger'].get('clean_label') else ' and the label ' + str(backdoor['target_class'])}.",
        f"- FGSM ({fgsm['library']}): L-inf, eps {fgsm['eps']}, true labels; {fgsm['train_vs_baseline']['n']} training "
        f"and {fgsm['test_vs_baseline']['n']} test images against the baseline; largest perturbation measured "
        f"{fgsm['test_vs_baseline']['bound_check']['max_linf']:.6f}.",
        f"- PGD: L-inf, eps {pgd_cfg['pgd_eps']}, step {pgd_cfg['pgd_step_size']}, {pgd_cfg['pgd_steps']} steps, "
        f"{pgd_cfg['pgd_restarts']} random start(s), white-box against every model on "
        f"{summary['pgd']['n_test_images']} test images.",
        *autoattack_lines(summary.get("autoattack")),
        "",
        _image(root, img["method1_poison_examples"], "poisoned training examples"),
        "",
        _image(root, img["trigger_families"], "the trigger families"),
        "",
        _image(root, img["method2_clean_vs_fgsm"], "FGSM examples"),
        "",
        "## 5. Adversarial metrics",
        "",
        summary["results_table"],
        "",
        _image(root, summary["accuracy_vs_eps"]["png"], "accuracy vs eps"),
        "",
        "Sanity checks (a failed check means a robustness number is not to be trusted):",
        "",
        *(f"- {'PASS' if c['passed'] else 'n/a' if c['passed'] is None else 'FAIL'}: {c['description']}"
          for c in summary["sanity_checks"].values()),
        "",
        "### Backdoor: controls, detection, removal",
        "",
        *controls_lines(backdoor["trigger_controls"]),
        *detection_lines(backdoor["detection"]),
        _image(root, backdoor["detection"]["png"], "detector view"),
        "",
    ]
    removal, runtime = backdoor["removal"], backdoor["runtime_check"]
    lines += [
        f"Removal ({removal['method']}): the {removal['removed']} samples flagged by {removal['detector']} (selected by "
        f"configuration) held {removal['poisons_removed']} of the poisons and left {removal['poisons_left']}; the "
        f"retrained model has clean accuracy {_pct(removal['clean_accuracy'])} "
        f"({removal['clean_accuracy_change_vs_baseline_points']:+.2f} points against the baseline) and ASR "
        f"{_pct(removal['attack_success_rate'])} (before removal {_pct(removal['attack_success_rate_before_removal'])}); "
        f"it cost {removal['cost_s']:.0f} s.",
        "",
        runtime_line(runtime),
        "",
        _image(root, removal["png"], "ASR before and after removal"),
        "",
    ]
    if backdoor.get("sweep"):
        sweep = backdoor["sweep"]
        lines += [f"Poison sweep ({sweep['epochs']} training epoch(s) per point):", "",
                  f"| poisons | trigger size | clean accuracy | ASR | flagged by {summary['config']['detector']} | precision | recall "
                  "| F1 |", "|---|---|---|---|---|---|---|---|",
                  *(f"| {r['poison_count']} | {r['trigger_size']} | {_pct(r['clean_accuracy'])} | "
                    f"{_pct(r['attack_success_rate'])} | {r['detection']['flagged']} | {r['detection']['precision']:.3f} "
                    f"| {r['detection']['recall']:.3f} | {r['detection']['f1']:.3f} |" for r in sweep["rows"]),
                  "", _image(root, sweep["png"], "ASR vs poison count"), ""]
    lines += matrix_lines(backdoor.get("matrix"), root)
    lines += ["## 6. Conclusions", "", *conclusions(summary)]
    return "\n".join(lines) + "\n"


def autoattack_lines(autoattack: dict[str, Any] | None) -> list[str]:
    """Section 4's AutoAttack bullets: the attacks, their settings and each model's result with its CI."""
    if not autoattack:
        return []
    lines = [f"- AutoAttack ({autoattack['attacks']}): eps {autoattack['eps']}, {autoattack['iterations']} APGD "
             f"iterations, {autoattack['target_classes']} target classes, Square with {autoattack['square_queries']} "
             f"queries on the first {autoattack['square_limit']} images; each attack on the points still robust, "
             f"worst case per point, on the {autoattack['n_test_images']} PGD test images."]
    for name, r in autoattack["per_model"].items():
        low, high = r["ci95"]
        lines.append(f"  - {name}: {_pct(r['robust_accuracy'])} (95% CI {_pct(low)} to {_pct(high)}; after APGD-CE "
                     f"{_pct(r['per_attack']['apgd_ce'])}, after APGD-T {_pct(r['per_attack']['apgd_t'])}; "
                     f"{r['time_s']:.0f} s)")
    return lines


def conclusions(summary: dict[str, Any]) -> list[str]:
    """Observations derived from the numbers, each stating its rule."""
    models, backdoor = summary["models"], summary["backdoor"]
    asr = backdoor["attack_success_rate"]

    def acc(model: str, test_set: str) -> float | None:
        return models.get(model, {}).get("eval", {}).get(test_set, {}).get("accuracy")

    out = [f"- The backdoor is {backdoor_strength(asr['poisoned'])} by its ASR of {_pct(asr['poisoned'])} "
           f"(rule: strong >= 90%, partial >= 50%, weak >= 10%); the clean baseline's ASR with the same trigger is "
           f"{_pct(asr['baseline'])}, and the poisoned model's clean accuracy is {_pct(acc('poisoned', 'clean'))} "
           f"against the baseline's {_pct(acc('baseline', 'clean'))}."]
    cost = 100 * (acc("defense_fgsm", "clean") - acc("baseline", "clean"))
    moved, whitebox = acc("defense_fgsm", "fgsm_transfer_from_baseline"), acc("defense_fgsm", "fgsm_whitebox")
    verdict = ("so the transferred number overstates its robustness (rule: white-box more than 5 points below transfer)"
               if whitebox < moved - 0.05 else "within 5 points of the transferred number")
    out.append(f"- FGSM adversarial training changes clean accuracy by {cost:+.2f} points. Against FGSM crafted on "
               f"the baseline it scores {_pct(moved)}; against FGSM crafted on itself {_pct(whitebox)}, {verdict}; "
               f"against white-box PGD {_pct(acc('defense_fgsm', 'pgd_whitebox'))}.")
    for name in models:
        if name.startswith("defense_") and name != "defense_fgsm":
            out.append(f"- {name}: clean {_pct(acc(name, 'clean'))}, white-box FGSM {_pct(acc(name, 'fgsm_whitebox'))}"
                       f", white-box PGD {_pct(acc(name, 'pgd_whitebox'))}.")
    out += backdoor_conclusions(backdoor)
    removal = backdoor["removal"]
    out.append(f"- After removing {removal['detector']}'s flags and retraining, ASR is {_pct(removal['attack_success_rate'])} "
               f"(goal <= 1%: {'met' if removal['goal_asr_at_most_1pct'] else 'not met'}) and clean accuracy moved "
               f"{removal['clean_accuracy_change_vs_baseline_points']:+.2f} points from the baseline (goal within 0.3: "
               f"{'met' if removal['goal_clean_within_0_3_points_of_baseline'] else 'not met'}).")
    failed = [c["description"] for c in summary["sanity_checks"].values() if c["passed"] is False]
    out.append(f"- Sanity checks: {len(summary['sanity_checks']) - len(failed)} of {len(summary['sanity_checks'])} "
               "passed or did not apply." + (" Failed: " + "; ".join(failed) + "." if failed else ""))
    return out


HTML_FILENAME = "report.html"
HTML_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>{{ title }}</title>
<style>
body { font: 16px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1b1b1b; background: #fff;
       margin: 0 auto; padding: 1rem; max-width: 62rem; overflow-wrap: anywhere; }
h1, h2, h3 { line-height: 1.25; }
img { max-width: 100%; height: auto; display: block; margin: 0.5rem 0; }
table { border-collapse: collapse; display: block; overflow-x: auto; max-width: 100%; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: left; overflow-wrap: normal; }
th { background: #f2f2f2; }
code { background: #f4f4f4; padding: 0 0.2rem; font-size: 0.9em; }
</style>
</head>
<body>
{{ body }}
</body>
</html>
"""


def _embedded_image_rule(root: Path) -> Any:
    """A markdown-it image renderer that inlines PNGs under ``root`` as base64 data: URIs (and
    anything else as its alt text), so the page needs no other file and fetches nothing."""
    import base64
    import html

    def render(renderer: Any, tokens: list[Any], idx: int, options: Any, env: Any) -> str:
        token = tokens[idx]
        alt = html.escape(token.content)
        target = (root / str(token.attrGet("src") or "")).resolve()
        if target.suffix.lower() != ".png" or not target.is_file() or root.resolve() not in target.parents:
            return f"<em>[missing figure: {alt}]</em>"
        data = base64.b64encode(target.read_bytes()).decode("ascii")
        return f'<img src="data:image/png;base64,{data}" alt="{alt}">'

    return render


def build_html(markdown_text: str, root: Path) -> str:
    """report.html: the REPORT.md text as one self-contained page (raw HTML in the text is
    escaped, figures are embedded, no script, a content security policy that allows nothing else)."""
    from jinja2 import Environment
    from markdown_it import MarkdownIt
    from markupsafe import Markup

    parser = MarkdownIt("commonmark", {"html": False}).enable("table")
    parser.add_render_rule("image", _embedded_image_rule(root))
    body = Markup(parser.render(markdown_text))  # nosec B704 - markdown-it escapes text when html is False
    page = Environment(autoescape=True).from_string(HTML_TEMPLATE)  # nosec B701 - autoescape is on
    return page.render(title="secure-ai-mnist run report", body=body)


def write_report(summary: dict[str, Any], path: Path) -> None:
    """Write REPORT.md and report.html (same content) atomically beside the metrics JSON."""
    threat = PROJECT_ROOT / "THREAT_MODEL.md"
    text = threat.read_text(encoding="utf-8") if threat.is_file() else None
    markdown_text = build_report(summary, path.parent, text)
    atomic_write_bytes(path, markdown_text.encode("utf-8"))
    atomic_write_bytes(path.with_name(HTML_FILENAME), build_html(markdown_text, path.parent).encode("utf-8"))
