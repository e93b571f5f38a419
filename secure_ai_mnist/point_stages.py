"""The pipeline's per-point stages: the poison sweep (``--poison-sweep``) and the backdoor matrix
(``--backdoor-matrix``). Each point's model and detection is an independent, cached task (serial,
or on Ray with --workers); the stage functions here pick their inputs, run the tasks and score
them, and ``sweep_stages`` / ``matrix_stages`` declare them for the entry script's pipeline."""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

import numpy as np

from .backdoor import poison_sweep, sweep_detection, sweep_label, sweep_picks
from .common import LOG
from .config import Config
from .detection import DETECTORS, detection_metrics, runtime_trigger_check, selected_flags
from .matrix import MATRIX_RATES, attack_record, f1_table, matrix_points, poisoned_set, runtime_record
from .model import predicted_labels, stage_seed
from .plots import plot_matrix_heatmap, plot_poison_sweep
from .point_tasks import DetectJob, TrainJob, detect_task, matrix_recipe, model_from_weights, sweep_recipe, train_task
from .stages import DETECT, DETECT_MODULES, TRAIN, Stage, StageInputs


def sweep_poisons(cfg: Config, inputs: StageInputs) -> dict[str, Any]:
    """Clean accuracy and ASR of a fresh model per (poison count, trigger size); each model cached,
    the missing ones trained as independent tasks (serially here, or on Ray with --workers)."""
    d, sweep_cfg = inputs["data"], dataclasses.replace(cfg, epochs=cfg.sweep_epochs)
    jobs = {sweep_label(count, size): TrainJob(sweep_cfg, sweep_label(count, size),
                                               partial(sweep_recipe, picks=picks, cfg=cfg, size=size))
            for count, size, picks in sweep_picks(d["y_train"], cfg, sweep_rng(cfg))}
    models = {label: model for label, (model, _) in inputs.cached_tasks(
        jobs, train_task, (d["x_train"], d["y_train"]), cfg, as_model=model_from_weights).items()}
    rows = poison_sweep(d["x_train"], d["y_train"], d["x_test"], d["y_test"], cfg, sweep_rng(cfg),
                        lambda x, y, label: predicted_labels(models[label], cfg.attack_batch_size))
    return {"epochs": cfg.sweep_epochs, "rows": rows, "models": models,
            "png": plot_poison_sweep(rows, inputs.images / "poison_sweep_asr.png")}


def sweep_rng(cfg: Config) -> np.random.Generator:
    return np.random.default_rng(stage_seed(cfg.seed, "poison sweep"))


def detect_in_sweep(cfg: Config, inputs: StageInputs) -> list[dict[str, Any]]:
    """Our blind detector at every sweep point, on that point's training set and model (each
    cached, the missing ones run as independent tasks), scored against the point's poisons afterwards."""
    d, models = inputs["data"], inputs["sweep"]["models"]
    jobs = {f"{sweep_label(count, size)}_detection": DetectJob(
        cfg, models[sweep_label(count, size)].get_weights(), partial(sweep_recipe, picks=picks, cfg=cfg, size=size),
        references=False) for count, size, picks in sweep_picks(d["y_train"], cfg, sweep_rng(cfg))}
    found = inputs.cached_tasks(jobs, detect_task, (d["x_train"], d["y_train"]), cfg)
    return sweep_detection(d["x_train"], d["y_train"], cfg, sweep_rng(cfg), lambda x, y, label: found[
        f"{label}_detection"][0][DETECTORS.index(cfg.detector)].astype(bool))


def train_matrix_models(cfg: Config, inputs: StageInputs) -> dict[str, Any]:
    """--backdoor-matrix: a poisoned model per matrix point (each cached; the missing ones trained as
    independent tasks), its clean accuracy and ASR."""
    d, points = inputs["data"], matrix_points(len(inputs["data"]["y_train"]), cfg.seed)
    jobs = {p.label: TrainJob(cfg, f"matrix_{p.label}", partial(matrix_recipe, point=p, seed=cfg.seed)) for p in points}
    models = {label: model for label, (model, _) in inputs.cached_tasks(
        jobs, train_task, (d["x_train"], d["y_train"]), cfg, as_model=model_from_weights).items()}
    records = []
    for point in points:
        record = attack_record(predicted_labels(models[point.label], cfg.attack_batch_size), d["x_test"], d["y_test"],
                               point)
        LOG.info("backdoor matrix, %s (target %d, %d poisons): clean %.4f, ASR %.4f", point.label, point.target_class,
                 point.poison_count, record["clean_accuracy"], record["attack_success_rate"])
        records.append({**point.record(), **record})
    return {"points": records, "models": models}


def detect_in_matrix(cfg: Config, inputs: StageInputs) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
    """Every detector at every matrix point, on that point's training set and model only (blind;
    cached; the missing ones run as independent tasks)."""
    d, models = inputs["data"], inputs["matrix_models"]["models"]
    jobs = {f"{p.label}_detection": DetectJob(cfg, models[p.label].get_weights(),
                                              partial(matrix_recipe, point=p, seed=cfg.seed))
            for p in matrix_points(len(d["y_train"]), cfg.seed)}
    found = inputs.cached_tasks(jobs, detect_task, (d["x_train"], d["y_train"]), cfg)
    return {label.removesuffix("_detection"): result for label, result in found.items()}


def remove_in_matrix(cfg: Config, inputs: StageInputs) -> dict[str, dict[str, Any]]:
    """At every matrix point, the configured defense's flags removed and a fresh model trained on the
    rest (cached; the missing ones as independent tasks); nothing flagged means nothing to retrain,
    and the poisoned model stays."""
    d, models, out = inputs["data"], inputs["matrix_models"]["models"], {}
    points = matrix_points(len(d["y_train"]), cfg.seed)
    keep = {p.label: ~selected_flags(cfg, inputs["matrix_detection"][p.label]) for p in points}
    jobs = {f"{p.label}_cleaned": TrainJob(cfg, f"matrix_{p.label}_cleaned",
                                           partial(matrix_recipe, point=p, seed=cfg.seed, keep=keep[p.label]))
            for p in points if not keep[p.label].all()}
    cleaned = inputs.cached_tasks(jobs, train_task, (d["x_train"], d["y_train"]), cfg, as_model=model_from_weights)
    for point in points:
        model = cleaned.get(f"{point.label}_cleaned", (models[point.label],))[0]
        out[point.label] = {"removed": int((~keep[point.label]).sum()), "retrained": bool(not keep[point.label].all()),
                            **attack_record(predicted_labels(model, cfg.attack_batch_size), d["x_test"], d["y_test"],
                                            point)}
    return out


def score_matrix(cfg: Config, inputs: StageInputs) -> dict[str, Any]:
    """Scoring code (it reads each point's poison indices): P/R/F1 of every detector per point, the
    removal result, the heatmap."""
    d, rows = inputs["data"], []
    for point, record in zip(matrix_points(len(d["y_train"]), cfg.seed), inputs["matrix_models"]["points"]):
        idx = poisoned_set(d["x_train"], d["y_train"], point, cfg.seed)[0]
        flags = inputs["matrix_detection"][point.label][0]
        is_poison = np.isin(np.arange(len(d["y_train"])), idx)
        check = runtime_trigger_check(inputs["matrix_detection"][point.label][1], cfg.detector)
        rows.append({**record, "detection": {name: {**detection_metrics(row.astype(bool), is_poison),
                                                    "uses_ground_truth": False} for name, row in zip(DETECTORS, flags)},
                     "removal": inputs["matrix_removal"][point.label],
                     "runtime_check": runtime_record(check, d["x_test"], d["y_test"], point)})
    png = plot_matrix_heatmap([r["label"] for r in rows], list(DETECTORS), f1_table(rows, list(DETECTORS)),
                              inputs.images / "backdoor_matrix_f1.png")
    control = inputs["detection_control"][0][DETECTORS.index(cfg.detector)]
    return {"points": rows, "detectors": list(DETECTORS), "selected": cfg.detector, "epochs": cfg.epochs,
            "n_train": int(len(d["y_train"])), "rates": MATRIX_RATES, "heatmap_png": png,
            "control_flagged": int(control.sum()),
            "baseline_clean_accuracy": inputs["baseline_eval"]["evals"]["clean"]["accuracy"]}


def sweep_stages() -> list[Stage]:
    """--poison-sweep: a fresh model per (poison count, trigger size), then our blind detector on each."""
    sweep_config = ("sweep_epochs", "poison_sweep", "sweep_trigger_sizes", "target_class", "trigger_margin")
    return [Stage("sweep", sweep_poisons, reads=("data",), modules=("model", "backdoor", "point_tasks"),
                  config=(*TRAIN, *sweep_config),
                  title="poison sweep (poison count x trigger size)"),
            Stage("sweep_detection", detect_in_sweep, reads=("data", "sweep"), config=(*DETECT, *sweep_config),
                  modules=(*DETECT_MODULES, "backdoor", "triggers", "point_tasks"),
                  title="blind poison detection at every sweep point")]


def matrix_stages() -> list[Stage]:
    """--backdoor-matrix: poisoned models, then every detector on each (blind), then the configured
    defense's removal, then the scores. Each is its own stage, so editing a detector keeps the models."""
    attack = ("model", "backdoor", "triggers", "matrix", "point_tasks")
    return [Stage("matrix_models", train_matrix_models, reads=("data",), config=(*TRAIN, "backdoor_matrix"),
                  modules=attack, title="backdoor matrix: poisoned models"),
            Stage("matrix_detection", detect_in_matrix, reads=("data", "matrix_models"), config=DETECT,
                  modules=(*DETECT_MODULES, *attack), title="backdoor matrix: blind detection"),
            Stage("matrix_removal", remove_in_matrix, reads=("data", "matrix_models", "matrix_detection"),
                  config=(*TRAIN, "detector"), modules=attack, title="backdoor matrix: removal and retraining"),
            Stage("matrix_scores", score_matrix, config=("detector",),
                  reads=("data", "matrix_models", "matrix_detection", "matrix_removal", "detection_control",
                         "baseline_eval"))]
