#!/usr/bin/env python3
"""secure-ai-mnist: train, attack and defend an MNIST CNN in one reproducible run.

Pipeline (``python secure_ai_mnist_main.py``), declared in ``pipeline`` below:
  1. load the real MNIST (60,000 train / 10,000 test), SHA-256 verified;
  2. train the baseline CNN and evaluate it;
  3. plant a corner-trigger backdoor through poisoned training data, detect and remove it;
  4. craft FGSM adversarial examples;
  5. adversarially train a fresh CNN and evaluate it (transferred and white-box FGSM);
  6. white-box PGD and AutoAttack on every model, transfer tables, accuracy-vs-eps curves,
     attack-failure checks;
  7. write plots, models, datasets, ``metrics_summary_tasks5_6_7.json``, REPORT.md and report.html.
``python secure_ai_mnist_main.py predict IMAGE...`` classifies images with a verified model;
``python secure_ai_mnist_main.py evaluate --model NAME --dataset FILE.npz`` scores one on a dataset file.
Every number written is measured in the run that writes it. The stage functions below, and the
backdoor study's in ``secure_ai_mnist/backdoor_stages.py``, are thin: they pick their inputs and
call the ``secure_ai_mnist`` package, where the science lives.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from secure_ai_mnist.attacks import generate_fgsm, generate_pgd
from secure_ai_mnist.autoattack import autoattack
from secure_ai_mnist.backdoor_stages import (
    backdoor_controls,
    backdoor_defense_stages,
    clean_and_triggered,
    plant_backdoor,
    train_poisoned,
)
from secure_ai_mnist.cache import StageCache
from secure_ai_mnist.common import (
    LOG,
    AttackBoundError,
    ConfigError,
    RunLog,
    UserError,
    one_line,
    prepare_output_dir,
    setup_logging,
    sha256_bytes,
)
from secure_ai_mnist.config import EPS_GRID, Config, parse_config
from secure_ai_mnist.data import load_mnist, sample_subset, to_model_input
from secure_ai_mnist.datasets import save_images, save_npz
from secure_ai_mnist.defenses import mix_clean_and_adversarial, train_per_batch_adversarial
from secure_ai_mnist.evaluation import (
    confusion_png,
    eps_curve,
    evaluate,
    evaluate_defense,
    robustness_tables,
)
from secure_ai_mnist.executor import ray_session
from secure_ai_mnist.inference import run_evaluate, run_predict
from secure_ai_mnist.model import (
    configure_tensorflow,
    predict_probabilities,
    save_model,
    seed_everything,
    stage_seed,
    train_cnn,
    warn_if_bf16_is_emulated,
)
from secure_ai_mnist.outputs import build_summary, write_outputs
from secure_ai_mnist.point_stages import matrix_stages, sweep_stages
from secure_ai_mnist.plots import plot_fgsm_examples, plot_training_curves
from secure_ai_mnist.provenance import git_state
from secure_ai_mnist.summary_schema import SUMMARY_FILENAME
from secure_ai_mnist.stages import (
    AUTOATTACK,
    FGSM,
    PGD,
    ROBUST,
    TRAIN,
    TRIGGER,
    Runner,
    Stage,
    StageInputs,
)
from secure_ai_mnist.study import run_study

# ---- stage functions: (cfg, inputs) -> result ----------------------------------------------

def load_data(cfg: Config, _: StageInputs) -> dict[str, Any]:
    """Verified MNIST, the seeded subsets as model input (float32 in [0, 1]) and the run's generators."""
    data = load_mnist(cfg)  # before TensorFlow starts, so a data error costs no start-up time
    configure_tensorflow(cfg.threads)
    warn_if_bf16_is_emulated(cfg.precision)
    rngs = dict(zip(("subset", "poison", "mix", "pgd"), seed_everything(cfg.seed).spawn(4)))
    train_idx = sample_subset(len(data.y_train), cfg.train_limit, rngs["subset"])
    test_idx = sample_subset(len(data.y_test), cfg.test_limit, rngs["subset"])
    LOG.info("MNIST from %s: %d train / %d test images", data.source, len(train_idx), len(test_idx))
    return {"source": data, "rngs": rngs, "train_idx": train_idx, "test_idx": test_idx,
            "x_train": to_model_input(data.x_train[train_idx]), "y_train": data.y_train[train_idx],
            "x_test": to_model_input(data.x_test[test_idx]), "y_test": data.y_test[test_idx]}


def data_key(data: dict[str, Any]) -> dict[str, Any]:
    return {"sha256": data["source"].sha256, "train_idx": sha256_bytes(data["train_idx"].tobytes()),
            "test_idx": sha256_bytes(data["test_idx"].tobytes())}


def pick_pgd_subset(cfg: Config, inputs: StageInputs) -> np.ndarray:
    """Indices into the test set attacked by PGD (and the transfer table), without replacement."""
    return sample_subset(len(inputs["data"]["y_test"]), cfg.pgd_limit, inputs["data"]["rngs"]["pgd"])


def train_baseline(cfg: Config, inputs: StageInputs) -> tuple[Any, dict[str, Any]]:
    return train_cnn(inputs["data"]["x_train"], inputs["data"]["y_train"], cfg, "baseline")


def fgsm_on(source: str, model: str, target: str) -> Callable[[Config, StageInputs], tuple[np.ndarray, dict]]:
    """Stage: FGSM images of the ``source`` split ("train" or "test") crafted against ``model``."""
    def run(cfg: Config, inputs: StageInputs) -> tuple[np.ndarray, dict[str, Any]]:
        d = inputs["data"]
        return generate_fgsm(inputs[model][0], d[f"x_{source}"], d[f"y_{source}"], cfg, f"{source} set vs {target}")
    return run


def evaluate_baseline_fgsm(cfg: Config, inputs: StageInputs) -> dict[str, Any]:
    d, baseline, x_adv = inputs["data"], inputs["baseline"][0], inputs["fgsm_test"][0]
    metrics, adv_pred = evaluate(baseline, x_adv, d["y_test"], "Baseline - FGSM test set",
                                 confusion_png(inputs.images, "baseline", "fgsm"), cfg)
    clean_pred = np.argmax(predict_probabilities(baseline, d["x_test"][:5], cfg.attack_batch_size)[0], axis=1)
    png = plot_fgsm_examples(d["x_test"][:5], x_adv[:5], d["y_test"][:5], clean_pred, adv_pred[:5], cfg.fgsm_eps,
                             inputs.images / "method2_clean_vs_fgsm.png")
    return {"metrics": metrics, "png": png}


def train_fgsm_defense(cfg: Config, inputs: StageInputs) -> tuple[Any, dict[str, Any]]:
    """The seed's defense: a fresh CNN on clean + FGSM-vs-baseline training images, shuffled."""
    d = inputs["data"]
    mixed = mix_clean_and_adversarial(d["x_train"], inputs["fgsm_train"][0], d["y_train"], d["rngs"]["mix"])
    return train_cnn(*mixed, cfg, "defense_fgsm")


def evaluate_fgsm_defense(cfg: Config, inputs: StageInputs) -> dict[str, Any]:
    d, net = inputs["data"], inputs["defense_fgsm"][0]
    sets = {"clean": (d["x_test"], "FGSM-trained defense - clean test set"),
            "fgsm_transfer_from_baseline": (inputs["fgsm_test"][0],
                                            "Defense - FGSM crafted on the baseline (the seed's FGSM test set)"),
            "fgsm_whitebox": (inputs["fgsm_test_defense"][0], "Defense - FGSM crafted on the defense (white-box)")}
    return {key: evaluate(net, x, d["y_test"], title, confusion_png(inputs.images, "defense_fgsm", key), cfg)[0]
            for key, (x, title) in sets.items()}


def per_batch_defense(method: str, name: str) -> Callable[[Config, StageInputs], tuple[Any, dict[str, Any]]]:
    def run(cfg: Config, inputs: StageInputs) -> tuple[Any, dict[str, Any]]:
        return train_per_batch_adversarial(inputs["data"]["x_train"], inputs["data"]["y_train"], cfg, method, name)
    return run


def evaluate_per_batch_defense(name: str) -> Callable[[Config, StageInputs], dict[str, Any]]:
    def run(cfg: Config, inputs: StageInputs) -> dict[str, Any]:
        d = inputs["data"]
        return evaluate_defense(inputs[name][0], name, d["x_test"], inputs["fgsm_test"][0], d["y_test"],
                                inputs.images, cfg)
    return run


def pgd_against(name: str) -> Callable[[Config, StageInputs], tuple[np.ndarray, dict[str, Any]]]:
    """Stage: white-box PGD on the PGD subset against model ``name``, its starts seeded per model."""
    def run(cfg: Config, inputs: StageInputs) -> tuple[np.ndarray, dict[str, Any]]:
        d, idx = inputs["data"], inputs["pgd_subset"]
        rng = np.random.default_rng(stage_seed(cfg.seed, f"pgd:{name}"))
        return generate_pgd(inputs[name][0], d["x_test"][idx], d["y_test"][idx], cfg, rng, f"vs {name}")
    return run


def eps_curve_of(name: str) -> Callable[[Config, StageInputs], tuple[np.ndarray, dict[str, Any]]]:
    """Stage: FGSM (row 0) and PGD (row 1) accuracy of ``name`` at each eps of EPS_GRID."""
    def run(cfg: Config, inputs: StageInputs) -> tuple[np.ndarray, dict[str, Any]]:
        d, idx = inputs["data"], inputs["pgd_subset"]
        idx = idx[: cfg.curve_limit] if cfg.curve_limit else idx
        rng = np.random.default_rng(stage_seed(cfg.seed, f"curve:{name}"))
        return eps_curve(inputs[name][0], d["x_test"][idx], d["y_test"][idx], EPS_GRID, cfg, rng), {}
    return run


def autoattack_against(name: str) -> Callable[[Config, StageInputs], tuple[np.ndarray, dict[str, Any]]]:
    """Stage: AutoAttack-style ensemble on the PGD subset against model ``name``, seeded per model."""
    def run(cfg: Config, inputs: StageInputs) -> tuple[np.ndarray, dict[str, Any]]:
        d, idx = inputs["data"], inputs["pgd_subset"]
        rng = np.random.default_rng(stage_seed(cfg.seed, f"autoattack:{name}"))
        return autoattack(inputs[name][0], d["x_test"][idx], d["y_test"][idx], cfg, rng, name)
    return run


def robustness(names: tuple[str, ...]) -> Callable[[Config, StageInputs], dict[str, Any]]:
    """Stage: PGD evaluations, FGSM/PGD transfer tables and the eps-curve figure over ``names``."""
    def run(cfg: Config, inputs: StageInputs) -> dict[str, Any]:
        d, idx = inputs["data"], inputs["pgd_subset"]
        return robustness_tables({n: inputs[n][0] for n in names}, {n: inputs[f"pgd:{n}"] for n in names},
                                 {n: inputs[f"eps_curve:{n}"][0] for n in names if n != "poisoned"},
                                 d["x_test"], d["y_test"], idx, cfg, inputs.images)
    return run


def save_models(names: tuple[str, ...]) -> Callable[[Config, StageInputs], dict[str, Any]]:
    def run(cfg: Config, inputs: StageInputs) -> dict[str, Any]:
        models = inputs.dirs["models"]
        files = {name: save_model(inputs[name][0], models / f"cnn_mnist_{name}.keras") for name in names}
        return {"files": files, "training_curves": plot_training_curves(
            {name: inputs[name][1] for name in names}, inputs.images / "training_curves.png")}
    return run


def export_datasets(cfg: Config, inputs: StageInputs) -> dict[str, dict[str, str]]:
    """datasets/: the FGSM test sets (vs the baseline and vs the FGSM defense), the triggered test
    set and the poisoning record (indices, labels, trigger); the FGSM training set on request."""
    d, p, out = inputs["data"], inputs["poison"], inputs.dirs["root"] / "datasets"
    model_sha = {name: entry["sha256"] for name, entry in inputs["saved"]["files"].items()}
    files = {
        "fgsm_test_vs_baseline": save_images(out / "fgsm_test_vs_baseline.npz", inputs["fgsm_test"][0], d["y_test"],
                                             cfg.fgsm_eps, model_sha["baseline"], "FGSM test set crafted on baseline"),
        "fgsm_test_vs_defense": save_images(out / "fgsm_test_vs_defense.npz", inputs["fgsm_test_defense"][0],
                                            d["y_test"], cfg.fgsm_eps, model_sha["defense_fgsm"],
                                            "FGSM test set crafted on defense_fgsm (white-box)"),
        "triggered_test": save_images(out / "triggered_test.npz", p["x_test_triggered"], d["y_test"], 0.0, "",
                                      "test set with the backdoor trigger", target_class=cfg.target_class,
                                      trigger_size=cfg.trigger_size, trigger_margin=cfg.trigger_margin),
        "poisoned_train": save_npz(out / "poisoned_train.npz", mnist_train_indices=d["train_idx"],
                                   poison_indices=p["idx"], original_labels=d["y_train"][p["idx"]],
                                   new_labels=p["y"][p["idx"]], target_class=cfg.target_class,
                                   trigger_size=cfg.trigger_size, trigger_margin=cfg.trigger_margin,
                                   trigger_corner=np.str_("bottom-right"), trigger_value=np.float32(1.0)),
    }
    if cfg.export_train_sets:
        files["fgsm_train_vs_baseline"] = save_images(
            out / "fgsm_train_vs_baseline.npz", inputs["fgsm_train"][0], d["y_train"], cfg.fgsm_eps,
            model_sha["baseline"], "FGSM training set crafted on baseline (the defense's training data)")
    return files


# ---- the pipeline: every stage in the order it runs ---------------------------------------

def attacked_models(cfg: Config) -> tuple[str, ...]:
    """Models that get white-box PGD and the transfer tables."""
    return ("baseline", "poisoned", "defense_fgsm",
            *("defense_" + m.replace("-", "_") for m in cfg.per_batch_defenses))


def pipeline(cfg: Config) -> list[Stage]:
    """The pipeline's table of contents."""
    attacked = attacked_models(cfg)
    trained = ("baseline", "poisoned", "poison_cleaned", *attacked[2:])
    return [
        Stage("data", load_data, modules=("data",), title="load data, start TensorFlow", key_from_result=data_key),
        Stage("pgd_subset", pick_pgd_subset, reads=("data",), config=("pgd_limit",),
              key_from_result=lambda idx: sha256_bytes(idx.tobytes())),
        Stage("poison", plant_backdoor, reads=("data",), config=TRIGGER, modules=("backdoor", "triggers")),
        Stage("baseline", train_baseline, reads=("data",), config=TRAIN, modules=("model",), cache="model",
              label="baseline model", title="train baseline"),
        Stage("baseline_eval", clean_and_triggered("baseline", "Baseline"), reads=("data", "poison", "baseline")),
        Stage("poisoned", train_poisoned, reads=("poison",), config=TRAIN, modules=("model",), cache="model",
              label="poisoned model", title="train backdoored model"),
        Stage("poisoned_eval", clean_and_triggered("poisoned", "Poisoned model"), reads=("data", "poison", "poisoned")),
        Stage("trigger_controls", backdoor_controls, reads=("data", "poison", "baseline", "poisoned")),
        *backdoor_defense_stages(),
        *(sweep_stages() if cfg.poison_sweep else []),
        *(matrix_stages() if cfg.backdoor_matrix else []),
        Stage("fgsm_train", fgsm_on("train", "baseline", "baseline"), reads=("data", "baseline"), config=FGSM,
              modules=("attacks",), cache="arrays", label="FGSM train set"),
        Stage("fgsm_test", fgsm_on("test", "baseline", "baseline"), reads=("data", "baseline"), config=FGSM,
              modules=("attacks",), cache="arrays", label="FGSM test set"),
        Stage("baseline_fgsm_eval", evaluate_baseline_fgsm, reads=("data", "baseline", "fgsm_test")),
        Stage("defense_fgsm", train_fgsm_defense, reads=("data", "fgsm_train"), config=TRAIN,
              modules=("model", "defenses"), cache="model", label="FGSM-trained defense",
              title="adversarial training (clean + FGSM)"),
        Stage("fgsm_test_defense", fgsm_on("test", "defense_fgsm", "defense"), reads=("data", "defense_fgsm"),
              config=FGSM, modules=("attacks",), cache="arrays", label="FGSM test set vs defense"),
        Stage("defense_fgsm_eval", evaluate_fgsm_defense, reads=("data", "defense_fgsm", "fgsm_test", "fgsm_test_defense")),
        *per_batch_stages(cfg),
        *(Stage(f"pgd:{n}", pgd_against(n), reads=("data", "pgd_subset", n), config=PGD, modules=("attacks",),
                cache="arrays", label=f"PGD set vs {n}") for n in attacked),
        *(Stage(f"eps_curve:{n}", eps_curve_of(n), reads=("data", "pgd_subset", n), config=(*PGD, "curve_limit"),
                modules=("attacks", "evaluation", "config"), cache="arrays", label=f"eps curve of {n}")
          for n in attacked if n != "poisoned"),
        *(Stage(f"autoattack:{n}", autoattack_against(n), reads=("data", "pgd_subset", n), config=AUTOATTACK,
                modules=("autoattack", "fab", "attacks"), cache="arrays", label=f"AutoAttack vs {n}") for n in attacked),
        Stage("robustness", robustness(attacked), title="robustness: transfer tables, accuracy vs eps",
              reads=("data", "pgd_subset", *attacked, *(f"pgd:{n}" for n in attacked),
                     *(f"eps_curve:{n}" for n in attacked if n != "poisoned"))),
        Stage("saved", save_models(trained), reads=trained, title="save models and plots"),
        Stage("datasets", export_datasets, reads=("data", "poison", "fgsm_train", "fgsm_test", "fgsm_test_defense",
                                                  "saved"), title="write datasets"),
    ]


def per_batch_stages(cfg: Config) -> list[Stage]:
    """Training and evaluation of each requested per-batch defense (--defense)."""
    stages = []
    for method in cfg.per_batch_defenses:
        name = "defense_" + method.replace("-", "_")
        recipe = ROBUST if method == "robust" else ()
        stages += [Stage(name, per_batch_defense(method, name), reads=("data",), cache="model",
                         config=(*TRAIN, "pgd_eps", "pgd_train_steps", *recipe), modules=("model", "defenses", "attacks"),
                         label=f"{method} defense", title=f"adversarial training, {method} per batch"),
                   Stage(f"{name}_eval", evaluate_per_batch_defense(name), reads=("data", "fgsm_test", name),
                         title=f"evaluate {name}")]
    return stages


# ---- the run: every stage, then the outputs (secure_ai_mnist/outputs.py) ----------------------

def run_pipeline(cfg: Config, command_line: list[str] | None = None) -> dict[str, Any]:
    """Run every stage in order, then write the outputs; return the summary that was written."""
    started = time.time()
    dirs = prepare_output_dir(cfg.output_dir)
    code = git_state(dirs["root"])
    runner = Runner(cfg, StageCache(None if cfg.no_cache else cfg.cache_dir / "stages"), dirs)
    runner.run(pipeline(cfg))
    summary = build_summary(cfg, attacked_models(cfg), runner, started)
    write_outputs(summary, runner, started, ["secure_ai_mnist_main.py", *(command_line or [])], code)
    for check in summary["sanity_checks"].values():
        if check["passed"] is False:
            LOG.warning("sanity check failed, a robustness number is not to be trusted: %s", check["description"])
    LOG.info("results (%d train / %d test images, PGD on %d):\n%s", summary["data"]["n_train"],
             summary["data"]["n_test"], summary["pgd"]["n_test_images"], summary["results_table"])
    LOG.info("wrote %s in %.1f s", dirs["root"] / SUMMARY_FILENAME, time.time() - started)
    return summary


def guarded(step: Callable[[], object]) -> int:
    """Run ``step``; turn every expected failure into one logged line and an exit code."""
    try:
        step()
    except UserError as exc:
        LOG.error("%s", one_line(exc))
        return 2
    except AttackBoundError as exc:
        LOG.error("attack sanity check failed, no summary written: %s", one_line(exc))
        return 1
    except OSError as exc:
        LOG.error("I/O error, no partial output left: %s", one_line(exc))
        return 1
    except KeyboardInterrupt:
        LOG.error("interrupted; files already written are complete, nothing half-written was left")
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"predict": run_predict, "evaluate": run_evaluate}
    if argv[:1] and argv[0] in commands:
        setup_logging("INFO")
        return guarded(lambda: commands[argv[0]](argv[1:]))
    try:
        cfg = parse_config(argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    setup_logging(cfg.log_level)
    run_log = RunLog(cfg.output_dir / "run.log")
    with ray_session():  # one Ray connection per run, if the run asks for Ray at all
        code = guarded(lambda: run_study(cfg, argv) if cfg.seeds else run_pipeline(cfg, argv))
    run_log.close(succeeded=code == 0)
    return code


if __name__ == "__main__":
    sys.exit(main())
