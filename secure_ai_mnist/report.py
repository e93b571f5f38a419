"""The run's report: the headline results table, REPORT.md (sections in reading order) and a
self-contained report.html rendered from it. Presentation only: every number comes from the
summary; the schema lives in summary_schema.py, the checks in checks.py, provenance in provenance.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .common import atomic_write_bytes
from .provenance import PROJECT_ROOT
from .summary_schema import SUMMARY_FILENAME
from .report_backdoor import backdoor_conclusions, controls_lines, detection_lines, matrix_lines, runtime_line
from .report_backdoor import image_link as _image
from .report_backdoor import pct as _pct


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
        f"| FGSM acc (white-box) | PGD acc (white-box) | AutoAttack acc{autoattack_images(autoattack)} |",
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


def autoattack_images(autoattack: dict[str, Any] | None) -> str:
    """The AutoAttack column's note: its attacks, and its images where they are fewer than PGD's."""
    counts = {r["n"] for r in (autoattack or {}).get("per_model", {}).values() if "whitebox_all" in r}
    attacks = "APGD-CE, APGD-T, FAB-T, Square" if (autoattack or {}).get("square_queries") else "APGD-CE, APGD-T, FAB-T"
    return f" ({attacks}" + (f"; first {min(counts)} PGD images only)" if counts else ")")


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
    sentence that judges a number states the rule it applies. The results and the verdicts come
    first, the map of the deliverables and the details after them."""
    lines = [*header_lines(summary),
             "## 1. Results and verdicts", "", summary["results_table"], "", *conclusions(summary), "",
             *deliverables_lines(summary), *environment_lines(summary), *clean_lines(summary, root),
             *security_lines(summary, threat_model), *generation_lines(summary, root),
             *adversarial_lines(summary, root), *backdoor_lines(summary["backdoor"], summary["config"], root)]
    return "\n".join(lines) + "\n"


def header_lines(summary: dict[str, Any]) -> list[str]:
    manifest = summary.get("manifest", {})
    code = manifest.get("code", {})
    return [
        "# secure-ai-mnist run report",
        "",
        f"Generated from `{SUMMARY_FILENAME}` of the run that started {manifest.get('started_utc', 'n/a')} and "
        f"finished {manifest.get('finished_utc', 'n/a')}: git commit `{code.get('commit') or 'unknown'}`"
        + (" (with uncommitted changes)" if code.get("dirty") else "") + ", command "
        f"`{' '.join(manifest.get('command_line', []))}`. "
        f"Data: {summary['data']['n_train']} training and {summary['data']['n_test']} test images of MNIST "
        f"({summary['data']['source']}). Nothing below is typed in by hand: it is all read from that JSON.",
        "",
    ]


def deliverables_lines(summary: dict[str, Any]) -> list[str]:
    return [
        "## 2. Deliverables map",
        "",
        "| deliverable | file |",
        "|---|---|",
        f"| metrics summary (all numbers, run manifest) | `{SUMMARY_FILENAME}` |",
        "| this report | `REPORT.md` |",
        "| run log with timestamps | `run.log` |",
        *(f"| model: {name} | `models/{Path(entry['model_file']['path']).name}` |"
          for name, entry in summary["models"].items()),
        f"| figures | `images/` ({len(summary['images'])} PNG files, each listed with its SHA-256 in the manifest) |",
        *(f"| {what} | `{rel}` |" for what, rel in deliverable_files(summary)),
        "| threat model (STRIDE) | `THREAT_MODEL.md` in the repository, repeated in section 5 |",
        "",
    ]


def environment_lines(summary: dict[str, Any]) -> list[str]:
    code = summary.get("manifest", {}).get("code", {})
    return [
        "## 3. Repositories and environment",
        "",
        f"- Code: git commit `{code.get('commit') or 'unknown'}`; library versions: "
        + ", ".join(f"{k} {v}" for k, v in summary["versions"].items()) + ".",
        f"- Host: {summary['host'].get('platform')}, {summary['host'].get('cpu_count')} CPUs.",
        "- Training arithmetic (`--precision`): "
        + ("bf16: the Keras-fit trainings computed in bfloat16 with float32 weights; evaluations and attacks "
           "ran in float32 on those weights; the numbers differ from an fp32 run's."
           if summary["config"].get("precision") == "bf16" else "fp32 throughout."),
        "- Data files (SHA-256 verified against the hashes held in the code): "
        + ", ".join(f"`{name}` {digest[:16]}..." for name, digest in summary["data"]["sha256"].items()) + ".",
        f"- Wall time of the run: {summary['timings_s']['total']:.0f} s.",
        "",
    ]


def clean_lines(summary: dict[str, Any], root: Path) -> list[str]:
    models, img = summary["models"], summary["images"]
    confused = most_confused(models["baseline"]["eval"]["clean"]["confusion_matrix"])
    return [
        "## 4. Clean metrics",
        "",
        "| model | clean accuracy | loss | inference (ms per image) | training time (s) |",
        "|---|---|---|---|---|",
        *(f"| {name} | {_pct(e['eval']['clean']['accuracy'])} | {e['eval']['clean']['loss']:.4f} | "
          f"{e['eval']['clean']['inference_time_per_sample_ms']:.3f} | {e['training'].get('train_time_s', 0):.0f} |"
          for name, e in models.items()),
        "",
        "Most confused classes of the baseline on the clean test set (true -> predicted, count): "
        + (", ".join(f"{t} -> {p} ({c})" for t, p, c in confused) or "none") + ".",
        "",
        _image(root, img["baseline_confusion_clean"], "baseline confusion matrix"),
        "",
        _image(root, img["training_curves"], "training curves"),
        "",
    ]


def security_lines(summary: dict[str, Any], threat_model: str | None) -> list[str]:
    lines = ["## 5. Threat model (STRIDE) and Bandit", ""]
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
    return [*lines, ""]


def generation_lines(summary: dict[str, Any], root: Path) -> list[str]:
    backdoor, fgsm, cfg, img = summary["backdoor"], summary["fgsm"], summary["config"], summary["images"]
    return [
        "## 6. Adversarial data generation",
        "",
        f"- Backdoor ({backdoor['family']}): {backdoor['poison_count']} training images "
        f"({_pct(backdoor['poison_fraction'])}) get {backdoor['trigger_description']}"
        f"{'' if backdoor['trigger'].get('clean_label') else ' and the label ' + str(backdoor['target_class'])}.",
        f"- FGSM ({fgsm['library']}): L-inf, eps {fgsm['eps']}, true labels; {fgsm['train_vs_baseline']['n']} training "
        f"and {fgsm['test_vs_baseline']['n']} test images against the baseline; largest perturbation measured "
        f"{fgsm['test_vs_baseline']['bound_check']['max_linf']:.6f}.",
        f"- PGD: L-inf, eps {cfg['pgd_eps']}, step {cfg['pgd_step_size']}, {cfg['pgd_steps']} steps, "
        f"{cfg['pgd_restarts']} random start(s), white-box against every model on "
        f"{summary['pgd']['n_test_images']} test images.",
        *autoattack_lines(summary.get("autoattack")),
        "",
        _image(root, img["method1_poison_examples"], "poisoned training examples"),
        "",
        _image(root, img["trigger_families"], "the trigger families"),
        "",
        _image(root, img["method2_clean_vs_fgsm"], "FGSM examples"),
        "",
    ]


def adversarial_lines(summary: dict[str, Any], root: Path) -> list[str]:
    return [
        "## 7. Adversarial metrics",
        "",
        "The results table is in section 1.",
        "",
        _image(root, summary["accuracy_vs_eps"]["png"], "accuracy vs eps"),
        "",
        "Sanity checks (a failed check means a robustness number is not to be trusted):",
        "",
        *(f"- {'PASS' if c['passed'] else 'n/a' if c['passed'] is None else 'FAIL'}: {c['description']}"
          for c in summary["sanity_checks"].values()),
        "",
    ]


def backdoor_lines(backdoor: dict[str, Any], cfg: dict[str, Any], root: Path) -> list[str]:
    removal, runtime = backdoor["removal"], backdoor["runtime_check"]
    lines = [
        "### Backdoor: controls, detection, removal",
        "",
        *controls_lines(backdoor["trigger_controls"]),
        *detection_lines(backdoor["detection"]),
        _image(root, backdoor["detection"]["png"], "detector view"),
        "",
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
                  f"| poisons | trigger size | clean accuracy | ASR | flagged by {cfg['detector']} | precision | recall "
                  "| F1 |", "|---|---|---|---|---|---|---|---|",
                  *(f"| {r['poison_count']} | {r['trigger_size']} | {_pct(r['clean_accuracy'])} | "
                    f"{_pct(r['attack_success_rate'])} | {r['detection']['flagged']} | {r['detection']['precision']:.3f} "
                    f"| {r['detection']['recall']:.3f} | {r['detection']['f1']:.3f} |" for r in sweep["rows"]),
                  "", _image(root, sweep["png"], "ASR vs poison count"), ""]
    return lines + matrix_lines(backdoor.get("matrix"), root)


def autoattack_lines(autoattack: dict[str, Any] | None) -> list[str]:
    """Section 4's AutoAttack bullets: the attacks, their settings and each model's result with its CI."""
    if not autoattack:
        return []
    square = (f"Square with {autoattack['square_queries']} queries" if autoattack["square_queries"]
              else "Square not run (--square-queries 0)")
    restarts = autoattack.get("apgd_ce_restarts", 1)  # summaries written before the flag had one start
    starts = f", APGD-CE from {restarts} random starts" if restarts > 1 else ""
    lines = [f"- AutoAttack ({autoattack['attacks']}): eps {autoattack['eps']}, {autoattack['iterations']} APGD and "
             f"FAB iterations{starts}, {autoattack['target_classes']} target classes, {square}; each attack on the points "
             "still robust, worst case per point. Every figure in a line is on the same images."]
    for name, r in autoattack["per_model"].items():
        lines.append(f"  - {name}: {_pct(r['robust_accuracy'])} on {r['n']} images ({_ci(r['ci95'])}; "
                     f"{_after_each(r['per_attack'])}; {r['time_s']:.0f} s)")
        every = r.get("whitebox_all")
        if every:
            lines.append(f"    - white-box attacks alone on all {every['n']} PGD images, an upper bound (Square did "
                         f"not run on all of them): {_pct(every['robust_accuracy'])} ({_ci(every['ci95'])}; "
                         f"{_after_each(every['per_attack'])})")
    return lines


ATTACK_NAMES = {"clean": "clean", "apgd_ce": "APGD-CE", "apgd_t": "APGD-T", "fab_t": "FAB-T", "square": "Square"}


def _ci(interval: list[float]) -> str:
    return f"95% CI {_pct(interval[0])} to {_pct(interval[1])}"


def _after_each(per_attack: dict[str, float]) -> str:
    """'clean x, after APGD-CE y, ...' in the order the attacks ran."""
    return ", ".join(f"{'' if k == 'clean' else 'after '}{ATTACK_NAMES.get(k, k)} {_pct(v)}" for k, v in per_attack.items())


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
