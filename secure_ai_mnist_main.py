#!/usr/bin/env python3
"""secure-ai-mnist: train, attack and defend an MNIST CNN in one reproducible run.

Pipeline (``python secure_ai_mnist_main.py``):
  1. load the real MNIST (60,000 train / 10,000 test), SHA-256 verified;
  2. train the baseline CNN and evaluate it;
  3. plant a corner-trigger backdoor through poisoned training data;
  4. craft FGSM adversarial examples;
  5. adversarially train a fresh CNN and evaluate it (transferred and white-box FGSM);
  6. write plots, models and ``metrics_summary_tasks5_6_7.json``.
Every number written is measured in the run that writes it. The stages live in the
``secure_ai_mnist`` package; this file is the pipeline's table of contents.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np

from secure_ai_mnist.attacks import generate_fgsm
from secure_ai_mnist.backdoor import (
    attack_success_rate,
    make_corner_trigger,
    poison_dataset,
    select_poison_indices,
)
from secure_ai_mnist.common import (
    LOG,
    AttackBoundError,
    ConfigError,
    UserError,
    prepare_output_dir,
    setup_logging,
    sha256_bytes,
    stage,
)
from secure_ai_mnist.config import Config, parse_config
from secure_ai_mnist.data import load_mnist, sample_subset, to_model_input
from secure_ai_mnist.evaluation import evaluate
from secure_ai_mnist.model import (
    configure_tensorflow,
    predict_probabilities,
    save_model,
    seed_everything,
    train_cnn,
)
from secure_ai_mnist.plots import (
    plot_fgsm_examples,
    plot_poison_examples,
    plot_training_curves,
)
from secure_ai_mnist.report import (
    SCHEMA_VERSION,
    SUMMARY_FILENAME,
    host_summary,
    library_versions,
    results_table,
    write_summary,
)


def run_pipeline(cfg: Config) -> dict[str, Any]:
    """Run every stage in order and return the summary that was written."""
    started = time.time()
    timings: dict[str, float] = {}
    dirs = prepare_output_dir(cfg.output_dir)
    img = dirs["images"]
    configure_tensorflow(cfg.threads)
    rng = seed_everything(cfg.seed)
    subset_rng, poison_rng, mix_rng = rng.spawn(3)

    with stage("load data", timings):
        data = load_mnist(cfg)
        train_idx = sample_subset(len(data.y_train), cfg.train_limit, subset_rng)
        test_idx = sample_subset(len(data.y_test), cfg.test_limit, subset_rng)
        x_train, y_train = to_model_input(data.x_train[train_idx]), data.y_train[train_idx]
        x_test, y_test = to_model_input(data.x_test[test_idx]), data.y_test[test_idx]
        LOG.info("MNIST from %s: %d train / %d test images", data.source, len(y_train), len(y_test))

    models: dict[str, Any] = {}
    histories: dict[str, dict[str, Any]] = {}
    x_test_triggered = make_corner_trigger(x_test, cfg.trigger_size, cfg.trigger_margin)

    with stage("train baseline", timings):
        baseline, histories["baseline"] = train_cnn(x_train, y_train, cfg, "baseline")
    with stage("evaluate baseline", timings):
        base_clean, _ = evaluate(baseline, x_test, y_test, "Baseline - clean test set", img / "cm_baseline_clean.png", cfg)
        base_trig, base_trig_pred = evaluate(baseline, x_test_triggered, y_test, "Baseline - triggered test set",
                                             img / "cm_baseline_triggered.png", cfg)

    with stage("poison and train backdoored model", timings):
        poison_idx = select_poison_indices(y_train, cfg.poison_count, cfg.target_class, poison_rng)
        x_poisoned, y_poisoned = poison_dataset(x_train, y_train, poison_idx, cfg)
        poisoned, histories["poisoned"] = train_cnn(x_poisoned, y_poisoned, cfg, "poisoned")
    with stage("evaluate backdoored model", timings):
        pois_clean, _ = evaluate(poisoned, x_test, y_test, "Poisoned model - clean test set",
                                 img / "cm_poisoned_clean.png", cfg)
        pois_trig, pois_trig_pred = evaluate(poisoned, x_test_triggered, y_test, "Poisoned model - triggered test set",
                                             img / "cm_poisoned_triggered.png", cfg)
        poison_png = plot_poison_examples(x_train, x_poisoned, y_train, y_poisoned, poison_idx,
                                          img / "poison_examples.png")

    with stage("FGSM on baseline (train + test)", timings):
        x_train_adv, fgsm_train_info = generate_fgsm(baseline, x_train, y_train, cfg, "train set vs baseline")
        x_test_adv, fgsm_test_info = generate_fgsm(baseline, x_test, y_test, cfg, "test set vs baseline")
    with stage("evaluate baseline on FGSM", timings):
        base_fgsm, base_fgsm_pred = evaluate(baseline, x_test_adv, y_test, "Baseline - FGSM test set",
                                             img / "cm_baseline_fgsm.png", cfg)
        clean_pred = np.argmax(predict_probabilities(baseline, x_test[:5], cfg.attack_batch_size)[0], axis=1)
        fgsm_png = plot_fgsm_examples(x_test[:5], x_test_adv[:5], y_test[:5], clean_pred, base_fgsm_pred[:5],
                                      cfg.fgsm_eps, img / "fgsm_examples.png")

    with stage("adversarial training (clean + FGSM)", timings):
        order = mix_rng.permutation(2 * len(x_train))
        x_mix = np.concatenate([x_train, x_train_adv])[order]
        y_mix = np.concatenate([y_train, y_train])[order]
        del x_train_adv
        defense, histories["defense_fgsm"] = train_cnn(x_mix, y_mix, cfg, "defense_fgsm")
        del x_mix, y_mix
    with stage("white-box FGSM on defense", timings):
        x_test_adv_wb, fgsm_wb_info = generate_fgsm(defense, x_test, y_test, cfg, "test set vs defense")
    with stage("evaluate defense", timings):
        def_clean, _ = evaluate(defense, x_test, y_test, "FGSM-trained defense - clean test set",
                                img / "cm_defense_clean.png", cfg)
        def_transfer, _ = evaluate(defense, x_test_adv, y_test, "Defense - FGSM crafted on baseline (transfer)",
                                   img / "cm_defense_fgsm_transfer.png", cfg)
        def_wb, _ = evaluate(defense, x_test_adv_wb, y_test, "Defense - FGSM crafted on defense (white-box)",
                             img / "cm_defense_fgsm_whitebox.png", cfg)

    with stage("save models and plots", timings):
        model_files = {
            "baseline": save_model(baseline, dirs["models"] / "cnn_mnist_baseline.keras"),
            "poisoned": save_model(poisoned, dirs["models"] / "cnn_mnist_poisoned.keras"),
            "defense_fgsm": save_model(defense, dirs["models"] / "cnn_mnist_defense_fgsm.keras"),
        }
        curves_png = plot_training_curves(histories, img / "training_curves.png")

    models = {
        "baseline": {"training": histories["baseline"], "model_file": model_files["baseline"],
                     "eval": {"clean": base_clean, "triggered": base_trig, "fgsm": base_fgsm}},
        "poisoned": {"training": histories["poisoned"], "model_file": model_files["poisoned"],
                     "eval": {"clean": pois_clean, "triggered": pois_trig}},
        "defense_fgsm": {"training": histories["defense_fgsm"], "model_file": model_files["defense_fgsm"],
                         "eval": {"clean": def_clean, "fgsm_transfer_from_baseline": def_transfer,
                                  "fgsm_whitebox": def_wb}},
    }
    backdoor = {
        "poison_count": int(cfg.poison_count),
        "poison_fraction": float(cfg.poison_count / len(y_train)),
        "target_class": cfg.target_class,
        "trigger": {"shape": "square", "size": cfg.trigger_size, "margin": cfg.trigger_margin,
                    "corner": "bottom-right", "value": 1.0},
        "poison_indices_sha256": sha256_bytes(poison_idx.astype(np.int64).tobytes()),
        "poison_source_label_counts": {str(k): int(v) for k, v in zip(*np.unique(y_train[poison_idx], return_counts=True))},
        "attack_success_rate": {
            "baseline": attack_success_rate(base_trig_pred, y_test, cfg.target_class),
            "poisoned": attack_success_rate(pois_trig_pred, y_test, cfg.target_class),
        },
        "asr_definition": "share of triggered test images whose true class is not the target that are predicted as the target",
        "examples_png": poison_png,
    }
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
        "fgsm": {"library": "adversarial-robustness-toolbox FastGradientMethod", "norm": "inf", "targeted": False,
                 "labels": "true labels", "eps": cfg.fgsm_eps, "train_vs_baseline": fgsm_train_info,
                 "test_vs_baseline": fgsm_test_info, "test_vs_defense_whitebox": fgsm_wb_info},
        "timings_s": {**timings, "total": round(time.time() - started, 3)},
        "images": {"training_curves": curves_png, "poison_examples": poison_png, "fgsm_examples": fgsm_png,
                   **{f"cm_{m}_{s}": v["confusion_png"] for m, e in models.items() for s, v in e["eval"].items()}},
        "results_table": table,
    }
    write_summary(summary, dirs["root"] / SUMMARY_FILENAME)
    LOG.info("results (%d train / %d test images):\n%s", len(y_train), len(y_test), table)
    LOG.info("wrote %s in %.1f s", dirs["root"] / SUMMARY_FILENAME, summary["timings_s"]["total"])
    return summary


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_config(argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    setup_logging(cfg.log_level)
    try:
        run_pipeline(cfg)
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


if __name__ == "__main__":
    sys.exit(main())
