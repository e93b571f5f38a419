#!/usr/bin/env python3
"""secure-ai-mnist: train, attack and defend an MNIST CNN in one reproducible run.

Pipeline (``python secure_ai_mnist_main.py``):
  1. load the real MNIST (60,000 train / 10,000 test), SHA-256 verified;
  2. train the baseline CNN and evaluate it;
  3. plant a corner-trigger backdoor through poisoned training data;
  4. craft FGSM adversarial examples;
  5. adversarially train a fresh CNN and evaluate it (transferred and white-box FGSM);
  6. white-box PGD on every model, transfer tables, accuracy-vs-eps curves, sanity checks;
  7. write plots, models and ``metrics_summary_tasks5_6_7.json``.
``python secure_ai_mnist_main.py predict IMAGE...`` classifies images with a verified model.
Every number written is measured in the run that writes it. The stages live in the
``secure_ai_mnist`` package; this file is the pipeline's table of contents.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from secure_ai_mnist.attacks import generate_fgsm
from secure_ai_mnist.backdoor import (
    attack_success_rate,
    backdoor_summary,
    make_corner_trigger,
    poison_dataset,
    poison_sweep,
    removal_summary,
    select_poison_indices,
    trigger_controls,
)
from secure_ai_mnist.cache import StageCache, cached_arrays, cached_model, code_version
from secure_ai_mnist.common import (
    LOG,
    AttackBoundError,
    RunLog,
    ConfigError,
    UserError,
    prepare_output_dir,
    setup_logging,
    sha256_bytes,
    stage,
)
from secure_ai_mnist.config import Config, parse_config
from secure_ai_mnist.data import load_mnist, sample_subset, to_model_input
from secure_ai_mnist.defenses import (
    detect_poison,
    mix_clean_and_adversarial,
    train_per_batch_adversarial,
)
from secure_ai_mnist.evaluation import (
    evaluate,
    evaluate_clean_and_triggered,
    evaluate_defense,
    robustness_study,
)
from secure_ai_mnist.inference import run_predict
from secure_ai_mnist.model import (
    configure_tensorflow,
    layer_output,
    predict_probabilities,
    predicted_labels,
    stage_seed,
    save_model,
    seed_everything,
    train_cnn,
)
from secure_ai_mnist.plots import (
    plot_asr_bars,
    plot_detection_view,
    plot_fgsm_examples,
    plot_poison_examples,
    plot_poison_sweep,
    plot_training_curves,
)
from secure_ai_mnist.report import (
    DETECTORS,
    REPORT_FILENAME,
    SCHEMA_VERSION,
    SUMMARY_FILENAME,
    host_summary,
    library_versions,
    results_table,
    run_bandit,
    run_manifest,
    sanity_checks,
    write_report,
    write_summary,
)


def run_pipeline(cfg: Config, command_line: list[str] | None = None) -> dict[str, Any]:
    """Run every stage in order and return the summary that was written."""
    started = time.time()
    timings: dict[str, float] = {}
    dirs = prepare_output_dir(cfg.output_dir)
    img = dirs["images"]
    cache = StageCache(None if cfg.no_cache else cfg.cache_dir / "stages", code_version())

    with stage("load data, start TensorFlow", timings):
        data = load_mnist(cfg)  # before TensorFlow starts, so a data error costs no start-up time
        configure_tensorflow(cfg.threads)
        subset_rng, poison_rng, mix_rng, pgd_rng = seed_everything(cfg.seed).spawn(4)
        train_idx = sample_subset(len(data.y_train), cfg.train_limit, subset_rng)
        test_idx = sample_subset(len(data.y_test), cfg.test_limit, subset_rng)
        x_train, y_train = to_model_input(data.x_train[train_idx]), data.y_train[train_idx]
        x_test, y_test = to_model_input(data.x_test[test_idx]), data.y_test[test_idx]
        pgd_idx = sample_subset(len(y_test), cfg.pgd_limit, pgd_rng)
        LOG.info("MNIST from %s: %d train / %d test images", data.source, len(y_train), len(y_test))
    data_key = {"sha256": data.sha256, "train_idx": sha256_bytes(train_idx.tobytes()),
                "test_idx": sha256_bytes(test_idx.tobytes())}
    train_key = {"data": data_key, "epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.learning_rate,
                 "seed": cfg.seed}
    x_test_triggered = make_corner_trigger(x_test, cfg.trigger_size, cfg.trigger_margin)
    histories: dict[str, dict[str, Any]] = {}
    evals: dict[str, dict[str, Any]] = {"baseline": {}, "poisoned": {}, "defense_fgsm": {}}

    with stage("train baseline", timings):
        base_key = cache.key("baseline", **train_key)
        baseline, histories["baseline"] = cached_model(
            cache, base_key, "baseline model", lambda: train_cnn(x_train, y_train, cfg, "baseline"))
    with stage("evaluate baseline", timings):
        base_trig_pred = evaluate_clean_and_triggered(baseline, "baseline", "Baseline", x_test, x_test_triggered,
                                                      y_test, evals["baseline"], img, cfg)

    with stage("poison and train backdoored model", timings):
        poison_idx = select_poison_indices(y_train, cfg.poison_count, cfg.target_class, poison_rng)
        x_poisoned, y_poisoned = poison_dataset(x_train, y_train, poison_idx, cfg)
        pois_key = cache.key("poisoned", **train_key, poison=sha256_bytes(poison_idx.tobytes()),
                             target=cfg.target_class, trigger=(cfg.trigger_size, cfg.trigger_margin))
        poisoned, histories["poisoned"] = cached_model(
            cache, pois_key, "poisoned model", lambda: train_cnn(x_poisoned, y_poisoned, cfg, "poisoned"))
    with stage("evaluate backdoored model", timings):
        pois_trig_pred = evaluate_clean_and_triggered(poisoned, "poisoned", "Poisoned model", x_test,
                                                      x_test_triggered, y_test, evals["poisoned"], img, cfg)
        poison_png = plot_poison_examples(x_train, x_poisoned, y_train, y_poisoned, poison_idx,
                                          img / "poison_examples.png")

    with stage("backdoor: trigger controls and poison detection", timings):
        controls = {name: trigger_controls(predicted_labels(net, cfg.attack_batch_size), x_test, y_test, cfg)
                    for name, net in (("baseline", baseline), ("poisoned", poisoned))}
        def run_detectors() -> tuple[np.ndarray, dict[str, Any]]:
            found, info = detect_poison(poisoned, x_poisoned, y_poisoned, poison_idx, cfg)
            return np.stack([found[name] for name in DETECTORS]), info

        flag_rows, detection = cached_arrays(
            cache, cache.key("poison_detection", poisoned=pois_key, fraction=cfg.detection_fraction),
            "poison detection flags", run_detectors)
        flags = {name: flag_rows[i].astype(bool) for i, name in enumerate(DETECTORS)}
        chosen = max(flags, key=lambda name: detection[name]["f1"])
        in_target = y_poisoned == cfg.target_class
        is_poison = np.isin(np.arange(len(y_poisoned)), poison_idx)
        detection_png = plot_detection_view(
            layer_output(poisoned, "penultimate", x_poisoned[in_target]), is_poison[in_target],
            flags[chosen][in_target], f"Class {cfg.target_class}, penultimate activations (PCA): {chosen}",
            img / "poison_detection_view.png")
    with stage("retrain without the flagged samples", timings):
        keep = ~flags[chosen]
        cleaned_key = cache.key("poison_cleaned", **train_key, poisoned=pois_key,
                                removed=sha256_bytes(np.flatnonzero(~keep).tobytes()))
        cleaned, histories["poison_cleaned"] = cached_model(
            cache, cleaned_key, "model retrained without flagged samples",
            lambda: train_cnn(x_poisoned[keep], y_poisoned[keep], cfg, "poison_cleaned"))
        evals["poison_cleaned"] = {}
        cleaned_trig_pred = evaluate_clean_and_triggered(cleaned, "poison_cleaned", "Retrained without flagged samples",
                                                         x_test, x_test_triggered, y_test, evals["poison_cleaned"], img, cfg)
    if cfg.poison_sweep:
        with stage("poison sweep (poison count x trigger size)", timings):
            sweep_cfg = dataclasses.replace(cfg, epochs=cfg.sweep_epochs)

            def train_for_sweep(x: np.ndarray, y: np.ndarray, label: str) -> Callable[[np.ndarray], np.ndarray]:
                key = cache.key("sweep", **train_key, sweep_epochs=cfg.sweep_epochs, counts=cfg.poison_sweep,
                                target=cfg.target_class, margin=cfg.trigger_margin, point=label)
                net, _ = cached_model(cache, key, label, lambda: train_cnn(x, y, sweep_cfg, label))
                return predicted_labels(net, cfg.attack_batch_size)

            sweep_rows = poison_sweep(x_train, y_train, x_test, y_test, cfg,
                                      np.random.default_rng(stage_seed(cfg.seed, "poison sweep")), train_for_sweep)
            sweep = {"epochs": cfg.sweep_epochs, "rows": sweep_rows,
                     "png": plot_poison_sweep(sweep_rows, img / "poison_sweep_asr.png")}

    with stage("FGSM on baseline (train + test)", timings):
        fgsm_key = {"eps": cfg.fgsm_eps, "backend": cfg.attack_backend}
        train_adv_key = cache.key("fgsm_train", model=base_key, **fgsm_key)
        x_train_adv, fgsm_train_info = cached_arrays(
            cache, train_adv_key, "FGSM train set",
            lambda: generate_fgsm(baseline, x_train, y_train, cfg, "train set vs baseline"))
        x_test_adv, fgsm_test_info = cached_arrays(
            cache, cache.key("fgsm_test", model=base_key, **fgsm_key), "FGSM test set",
            lambda: generate_fgsm(baseline, x_test, y_test, cfg, "test set vs baseline"))
    with stage("evaluate baseline on FGSM", timings):
        evals["baseline"]["fgsm"], base_fgsm_pred = evaluate(baseline, x_test_adv, y_test, "Baseline - FGSM test set",
                                                             img / "cm_baseline_fgsm.png", cfg)
        clean_pred = np.argmax(predict_probabilities(baseline, x_test[:5], cfg.attack_batch_size)[0], axis=1)
        fgsm_png = plot_fgsm_examples(x_test[:5], x_test_adv[:5], y_test[:5], clean_pred, base_fgsm_pred[:5],
                                      cfg.fgsm_eps, img / "fgsm_examples.png")

    with stage("adversarial training (clean + FGSM)", timings):
        def train_defense() -> tuple[Any, dict[str, Any]]:
            return train_cnn(*mix_clean_and_adversarial(x_train, x_train_adv, y_train, mix_rng), cfg, "defense_fgsm")

        def_key = cache.key("defense_fgsm", **train_key, adversarial=train_adv_key)
        defense, histories["defense_fgsm"] = cached_model(cache, def_key, "FGSM-trained defense", train_defense)
    with stage("white-box FGSM on defense", timings):
        x_test_adv_wb, fgsm_wb_info = cached_arrays(
            cache, cache.key("fgsm_test", model=def_key, **fgsm_key), "FGSM test set vs defense",
            lambda: generate_fgsm(defense, x_test, y_test, cfg, "test set vs defense"))
    with stage("evaluate defense", timings):
        evals["defense_fgsm"]["clean"], _ = evaluate(defense, x_test, y_test, "FGSM-trained defense - clean test set",
                                                     img / "cm_defense_clean.png", cfg)
        evals["defense_fgsm"]["fgsm_transfer_from_baseline"], _ = evaluate(
            defense, x_test_adv, y_test, "Defense - FGSM crafted on baseline (transfer)",
            img / "cm_defense_fgsm_transfer.png", cfg)
        evals["defense_fgsm"]["fgsm_whitebox"], _ = evaluate(
            defense, x_test_adv_wb, y_test, "Defense - FGSM crafted on defense (white-box)",
            img / "cm_defense_fgsm_whitebox.png", cfg)

    nets = {"baseline": baseline, "poisoned": poisoned, "defense_fgsm": defense}
    net_keys = {"baseline": base_key, "poisoned": pois_key, "defense_fgsm": def_key}
    for method in cfg.per_batch_defenses:
        name = "defense_" + method.replace("-", "_")
        with stage(f"adversarial training, {method} per batch", timings):
            recipe = {k: v for k, v in cfg.to_json().items() if k.startswith("robust_")} if method == "robust" else {}
            key = net_keys[name] = cache.key(name, **train_key, eps=cfg.pgd_eps, train_steps=cfg.pgd_train_steps,
                                             **recipe)
            nets[name], histories[name] = cached_model(
                cache, key, f"{method} defense",
                lambda: train_per_batch_adversarial(x_train, y_train, cfg, method, name))  # noqa: B023
        with stage(f"evaluate {name}", timings):
            evals[name] = evaluate_defense(nets[name], name, x_test, x_test_adv, y_test, img, cfg)

    with stage("robustness: white-box PGD, transfer table, accuracy vs eps", timings):
        robustness = robustness_study(nets, net_keys, x_test, y_test, pgd_idx, cfg, cache, img)
        for name, metrics in robustness.pop("pgd_evals").items():
            evals[name]["pgd_whitebox"] = metrics

    with stage("save models and plots", timings):
        model_files = {
            "baseline": save_model(baseline, dirs["models"] / "cnn_mnist_baseline.keras"),
            "poisoned": save_model(poisoned, dirs["models"] / "cnn_mnist_poisoned.keras"),
            "poison_cleaned": save_model(cleaned, dirs["models"] / "cnn_mnist_poison_cleaned.keras"),
            "defense_fgsm": save_model(defense, dirs["models"] / "cnn_mnist_defense_fgsm.keras"),
            **{name: save_model(nets[name], dirs["models"] / f"cnn_mnist_{name}.keras")
               for name in nets if name not in ("baseline", "poisoned", "defense_fgsm")},
        }
        curves_png = plot_training_curves(histories, img / "training_curves.png")

    models = {name: {"training": histories[name], "model_file": model_files[name], "eval": evals[name]}
              for name in evals}
    backdoor = backdoor_summary(cfg, y_train, poison_idx, y_test, base_trig_pred, pois_trig_pred, poison_png)
    backdoor["attack_success_rate"]["poison_cleaned"] = attack_success_rate(cleaned_trig_pred, y_test, cfg.target_class)
    removal_png = plot_asr_bars({name: (evals[name]["clean"]["accuracy"], backdoor["attack_success_rate"][name])
                                 for name in ("baseline", "poisoned", "poison_cleaned")}, img / "poison_removal_asr.png")
    backdoor.update(
        trigger_controls=controls,
        detection={**detection, "goal_f1_at_least_0_9": max(detection[name]["f1"] for name in flags) >= 0.9,
                   "png": detection_png},
        removal=removal_summary(chosen, detection[chosen], evals, backdoor["attack_success_rate"], removal_png),
        sweep=sweep if cfg.poison_sweep else None,
    )
    checks = sanity_checks(models, robustness["transfer"]["accuracy"], robustness["accuracy_vs_eps"], cfg)
    table = results_table(models, backdoor)
    summary = {
        "schema_version": SCHEMA_VERSION,
        "generated_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": cfg.to_json(),
        "data": {"source": data.source, "sha256": data.sha256, "n_train": int(len(y_train)),
                 "n_test": int(len(y_test)), "n_train_available": int(len(data.y_train)),
                 "n_test_available": int(len(data.y_test))},
        "versions": library_versions(),
        "host": host_summary(),
        "models": models,
        "backdoor": backdoor,
        "fgsm": {"library": "compiled TensorFlow (equal to ART's FastGradientMethod, tested)"
                 if cfg.attack_backend == "compiled" else "adversarial-robustness-toolbox FastGradientMethod",
                 "norm": "inf", "targeted": False, "labels": "true labels", "eps": cfg.fgsm_eps,
                 "train_vs_baseline": fgsm_train_info, "test_vs_baseline": fgsm_test_info,
                 "test_vs_defense_whitebox": fgsm_wb_info},
        **robustness,
        "sanity_checks": checks,
        "cache": {"enabled": not cfg.no_cache, "reused": cache.hits, "code_version": cache.code},
        "timings_s": {**timings, "total": round(time.time() - started, 3)},
        "images": {"training_curves": curves_png, "poison_examples": poison_png, "fgsm_examples": fgsm_png,
                   "accuracy_vs_eps": robustness["accuracy_vs_eps"]["png"],
                   **{f"cm_{m}_{s}": v["confusion_png"] for m, e in models.items() for s, v in e["eval"].items()}},
        "results_table": table,
    }
    with stage("Bandit on this code base", timings):
        summary["bandit"] = run_bandit()
    written = [*(entry["path"] for entry in model_files.values()), *summary["images"].values(),
               *(v for v in (backdoor["detection"]["png"], backdoor["removal"]["png"],
                             (backdoor["sweep"] or {}).get("png")) if v)]
    summary["manifest"] = run_manifest(started, ["secure_ai_mnist_main.py", *(command_line or [])], data.sha256,
                                       dirs["root"], written)
    summary["report"] = str(dirs["root"] / REPORT_FILENAME)
    write_summary(summary, dirs["root"] / SUMMARY_FILENAME)
    write_report(summary, dirs["root"] / REPORT_FILENAME)
    for check in checks.values():
        if check["passed"] is False:
            LOG.warning("sanity check failed, a robustness number is not to be trusted: %s", check["description"])
    LOG.info("results (%d train / %d test images, PGD on %d):\n%s", len(y_train), len(y_test), len(pgd_idx), table)
    LOG.info("wrote %s in %.1f s", dirs["root"] / SUMMARY_FILENAME, summary["timings_s"]["total"])
    return summary


def guarded(step: Callable[[], object]) -> int:
    """Run ``step``; turn every expected failure into one logged line and an exit code."""
    try:
        step()
    except UserError as exc:
        LOG.error("%s", exc)
        return 2
    except AttackBoundError as exc:
        LOG.error("attack sanity check failed, no summary written: %s", exc)
        return 1
    except OSError as exc:
        LOG.error("I/O error, no partial output left: %s", exc)
        return 1
    except KeyboardInterrupt:
        LOG.error("interrupted; files already written are complete, nothing half-written was left")
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["predict"]:
        setup_logging("INFO")
        return guarded(lambda: run_predict(argv[1:]))
    try:
        cfg = parse_config(argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    setup_logging(cfg.log_level)
    run_log = RunLog(cfg.output_dir / "run.log")
    code = guarded(lambda: run_pipeline(cfg, argv))
    run_log.close(succeeded=code == 0)
    return code


if __name__ == "__main__":
    sys.exit(main())
