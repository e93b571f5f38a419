"""Defenses: the seed's static FGSM adversarial training set, and adversarial training with
examples generated per batch against the model being trained (FGSM from a random start,
Wong et al. 2020; PGD, Madry et al. 2018)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from .attacks import make_linf_attack
from .common import LOG, TimeBudgetError
from .config import Config
from .model import (build_baseline_cnn, build_network, float32_model, seed_everything, stage_seed,
                    warn_if_bf16_is_emulated)

if TYPE_CHECKING:
    import keras

# Catastrophic overfitting: held-out robust accuracy this far below its best. On 1,000 held-out
# images the binomial noise is at most 1.6 points (sd), so a 20-point drop is no chance.
COLLAPSE_DROP = 0.2


def mix_clean_and_adversarial(
    x: np.ndarray, x_adv: np.ndarray, y: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The seed's training set: clean and adversarial copies of (x, y) together, shuffled (2N)."""
    order = rng.permutation(2 * len(x))
    return np.concatenate([x, x_adv])[order], np.concatenate([y, y])[order]


def attack_schedule(method: str, cfg: Config) -> tuple[float, int]:
    """(step size, steps) of the per-batch attack: FGSM-RS takes one step of 1.25 eps (Wong et
    al.); PGD takes cfg.pgd_train_steps steps of 2.5 eps / steps (Madry et al.)."""
    if method == "fgsm-rs":
        return 1.25 * cfg.pgd_eps, 1
    if method == "pgd":
        return 2.5 * cfg.pgd_eps / cfg.pgd_train_steps, cfg.pgd_train_steps
    raise ValueError(f"unknown per-batch defense {method!r}")


def train_per_batch_adversarial(
    x: np.ndarray, y: np.ndarray, cfg: Config, method: str, label: str
) -> tuple[keras.Model, dict[str, Any]]:
    """A fresh seed CNN trained only on adversarial examples (eps = cfg.pgd_eps, random start)
    crafted for each batch against the model's weights at that very step, inside one compiled
    step (``robust_step``), with Adam at cfg.learning_rate for cfg.epochs. Deterministic for a
    seed. Returns (model, training record). ``method`` "robust" is the robust profile's recipe
    (``train_robust``, on the network cfg.robust_net)."""
    import keras

    if method == "robust":
        return train_robust(x, y, cfg, label)
    seed_everything(stage_seed(cfg.seed, label))
    rng = np.random.default_rng(stage_seed(cfg.seed, f"{label}:batches"))
    model = build_baseline_cnn(cfg.learning_rate)
    step_fn = robust_step(model, keras.optimizers.Adam(learning_rate=cfg.learning_rate))
    step, steps = attack_schedule(method, cfg)
    record: dict[str, Any] = {"loss": [], "accuracy": []}
    start = time.perf_counter()
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        loss, accuracy, _ = adversarial_epoch(step_fn, x, y, rng.permutation(len(x)), cfg.batch_size,
                                              lambda _: cfg.pgd_eps, step / cfg.pgd_eps, steps)
        record["loss"].append(loss)
        record["accuracy"].append(accuracy)
        LOG.info("%s epoch %d/%d: adversarial loss %.4f, accuracy %.4f (%.1f s)", label, epoch + 1, cfg.epochs, loss,
                 accuracy, time.perf_counter() - t0)
    return model, {**record, "train_time_s": round(time.perf_counter() - start, 3), "n_train": int(len(x)),
                   "method": method, "eps": cfg.pgd_eps, "step_size": step, "steps": steps}


def adversarial_epoch(step_fn: Any, x: np.ndarray, y: np.ndarray, order: np.ndarray, batch_size: int,
                      eps_at: Callable[[float], float], step_ratio: float, steps: int) -> tuple[float, float, float]:
    """One epoch of ``robust_step`` over (x, y) in ``order``, batch by batch: batch i attacked at
    eps_at(i / batches per epoch) with ``steps`` steps of step_ratio * eps. Returns (mean
    adversarial loss, adversarial accuracy, the last batch's eps)."""
    import tensorflow as tf

    batches = -(-len(x) // batch_size)
    loss_sum = correct = eps = 0.0
    for i in range(batches):
        eps = eps_at(i / batches)
        idx = order[i * batch_size : (i + 1) * batch_size]
        step_loss, step_correct = step_fn(tf.constant(x[idx]), tf.constant(y[idx], tf.int64),
                                          tf.constant(eps, tf.float32), tf.constant(step_ratio * eps, tf.float32),
                                          tf.constant(steps, tf.int32))
        loss_sum += float(step_loss)
        correct += float(step_correct)
    return loss_sum / len(x), correct / len(x), eps


def cyclic_learning_rate(peak: float, total_steps: int) -> Any:
    """Wong et al.'s one-cycle schedule: linear from 0 up to ``peak`` at 40% of training, then
    linearly back to 0 at ``total_steps`` (a Keras LearningRateSchedule over optimizer steps)."""
    import keras
    import tensorflow as tf

    class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step: Any) -> Any:
            t = tf.cast(step, tf.float32) / float(max(total_steps, 1))
            return peak * tf.maximum(0.0, tf.minimum(t / 0.4, (1.0 - t) / 0.6))

        def get_config(self) -> dict[str, Any]:
            return {"peak": peak, "total_steps": total_steps}

    return OneCycle()


def split_holdout(n: int, holdout: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint (train indices, held-out indices) of range(n), drawn without replacement."""
    order = rng.permutation(n)
    return np.sort(order[holdout:]), np.sort(order[:holdout])


def train_robust(x: np.ndarray, y: np.ndarray, cfg: Config, label: str) -> tuple[keras.Model, dict[str, Any]]:
    """The robust profile's defense: the network cfg.robust_net (TRADES's SmallCNN by default) trained on
    FGSM-RS examples (Wong et al. 2020: random start in the eps ball, one step of 1.25 eps) crafted
    per batch inside one compiled step, with a one-cycle learning rate, eps ramped up over
    cfg.robust_ramp_epochs, and a guard against catastrophic overfitting: after each epoch, the
    guard attack on cfg.robust_holdout training images kept out of training; the weights with the
    best held-out robust accuracy at full eps are kept, and training stops when that accuracy
    collapses (20 points below its best). With cfg.robust_pgd_epochs, the last epochs train on PGD
    examples instead, and a collapse during the FGSM-RS epochs (20 points below the peak at any eps,
    the ramp's included) restores the peak's weights and starts the PGD epochs at once. Every
    planned epoch runs on every machine: when the first FGSM-RS epoch (and again the first PGD
    epoch) projects the recipe past cfg.robust_budget_min minutes, training raises TimeBudgetError
    instead of returning a shorter-trained model.
    With cfg.robust_precision "bf16" the training steps compute in mixed bfloat16; the guard reads,
    and the function returns, the float32 network holding the same weights.
    Returns (model, record with per-epoch loss/accuracy/eps/holdout numbers, the kept epoch
    and why training stopped)."""
    import keras

    seed_everything(stage_seed(cfg.seed, label))
    rng = np.random.default_rng(stage_seed(cfg.seed, f"{label}:batches"))
    train_idx, hold_idx = split_holdout(len(x), min(cfg.robust_holdout, len(x) // 5), rng)
    x_tr, y_tr = x[train_idx], y[train_idx]
    steps_per_epoch = -(-len(x_tr) // cfg.batch_size)
    warn_if_bf16_is_emulated(cfg.robust_precision, flag="--robust-precision")
    model = build_network(cfg.robust_net, cfg.learning_rate, cfg.robust_precision)
    evaluated = float32_model(model, cfg.learning_rate)  # model itself in fp32; its fp32 twin under bf16
    optimizer = keras.optimizers.Adam(learning_rate=cyclic_learning_rate(cfg.robust_lr,
                                                                         cfg.robust_epochs * steps_per_epoch))
    step_fn = robust_step(model, optimizer, cfg.robust_loss, cfg.robust_trades_beta)
    guard = holdout_guard(evaluated, x[hold_idx], y[hold_idx], cfg,
                          np.random.default_rng(stage_seed(cfg.seed, f"{label}:guard")))
    record = robust_record(cfg, len(x_tr), len(hold_idx))
    keeper = KeptWeights(model.get_weights(), robust_train_eps(cfg), max(cfg.robust_epochs - cfg.robust_pgd_epochs, 0),
                         bool(cfg.robust_pgd_epochs))
    stop_reason = "planned epochs done"
    start = time.perf_counter()
    for epoch in range(cfg.robust_epochs):
        t0 = time.perf_counter()
        loss, accuracy, eps, steps = robust_epoch(step_fn, x_tr, y_tr, rng.permutation(len(x_tr)), cfg, epoch,
                                                  keeper.pgd_from)
        t1 = time.perf_counter()
        if evaluated is not model:
            evaluated.set_weights(model.get_weights())
        hold_clean, hold_robust = guard()
        log_epoch(record, cfg, label, {"loss": loss, "accuracy": accuracy, "epoch_eps": eps, "epoch_steps": steps,
                                       "holdout_clean": hold_clean, "holdout_robust": hold_robust,
                                       "epoch_time_s": round(time.perf_counter() - t0, 3),
                                       "guard_time_s": round(time.perf_counter() - t1, 3)})
        if steps not in record["epoch_steps"][:-1]:  # the first epoch of its kind: a new measurement
            check_budget(record, cfg, keeper.pgd_from)
        collapse = keeper.observe(model, epoch, eps, hold_robust, record, label)
        if collapse:
            stop_reason = collapse
            break
    if keeper.best[1] >= 0:  # else the last epoch's weights, which `evaluated` holds already
        evaluated.set_weights(keeper.best[2])
    record.update(kept_epoch=keeper.best[1] + 1, kept_holdout_robust=keeper.best[0], stop_reason=stop_reason,
                  epochs_run=len(record["loss"]), train_time_s=round(time.perf_counter() - start, 3))
    return evaluated, record


class KeptWeights:
    """The robust defense's weight keeping, epoch by epoch: ``best`` is (held-out robust accuracy,
    epoch, weights) of the best epoch at full training eps (the kept model; epoch -1 before one);
    ``peak`` the same at any eps, the ramp's included. ``pgd_from`` is the first PGD epoch, moved
    forward when FGSM-RS collapses. It reads only the held-out accuracy, never the test set."""

    def __init__(self, weights: list[np.ndarray], full_eps: float, pgd_from: int, has_pgd: bool) -> None:
        self.best = self.peak = (-1.0, -1, weights)
        self.full_eps, self.pgd_from, self.has_pgd = full_eps, pgd_from, has_pgd

    def observe(self, model: keras.Model, epoch: int, eps: float, hold_robust: float, record: dict[str, Any],
                label: str) -> str | None:
        """Record the epoch; on an FGSM-RS collapse (``COLLAPSE_DROP`` below the peak before the PGD
        epochs) restore the peak's weights into ``model`` and start PGD at the next epoch; return the
        stop reason when the accuracy at full eps collapses below the best, else None."""
        full_eps = eps >= self.full_eps - 1e-9
        if full_eps and hold_robust > self.best[0]:
            self.best = (hold_robust, epoch, model.get_weights())
        if hold_robust > self.peak[0]:
            self.peak = (hold_robust, epoch, model.get_weights())
        # Against the peak at any eps: a collapse can come before the ramp ends (at training eps 0.4,
        # 0.238 -> 0.011 between the last ramp epoch and the first full-eps one, unseen by `best`).
        if self.peak[0] - hold_robust > COLLAPSE_DROP and self.has_pgd and epoch + 1 < self.pgd_from:
            # FGSM-RS has overfitted; PGD examples do not, so go back to the peak weights and switch now.
            model.set_weights(self.peak[2])
            self.pgd_from = epoch + 1
            record["switched_to_pgd_after_epoch"] = epoch + 1
            LOG.warning("%s: held-out robust accuracy fell from %.3f to %.3f; back to epoch %d's weights, PGD "
                        "from the next epoch", label, self.peak[0], hold_robust, self.peak[1] + 1)
        elif full_eps and self.best[0] - hold_robust > COLLAPSE_DROP:
            reason = (f"catastrophic overfitting: held-out robust accuracy fell from {self.best[0]:.3f} to "
                      f"{hold_robust:.3f}")
            LOG.warning("%s: %s; keeping epoch %d", label, reason, self.best[1] + 1)
            return reason
        return None


def robust_step(model: keras.Model, optimizer: Any, loss: str = "ce", beta: float = 1.0) -> Any:
    """The compiled training step ``(x, y, eps, step, steps) -> (summed loss, correct count)``:
    ``steps`` signed-gradient steps of size ``step`` from a uniform random start in the eps ball
    (pixels kept in [0, 1] and within eps of x), then one optimizer step. ``loss`` "ce": the
    attack and the training loss are the cross-entropy of the attacked images (Madry et al.);
    "trades": the attack maximises KL(p(x) || p(x_adv)) and the training loss is the clean
    cross-entropy + beta * that KL (Zhang et al. 2019). The correct count is on x_adv."""
    import tensorflow as tf

    from .attacks import logits_model

    net = logits_model(model)
    optimizer.build(net.trainable_variables)
    image, scalar = tf.TensorSpec([None, *model.input_shape[1:]], tf.float32), tf.TensorSpec([], tf.float32)
    trades = loss == "trades"

    def logits_of(xb: Any, training: bool) -> Any:  # float32 even when the layers compute in bfloat16
        return tf.cast(net(xb, training=training), tf.float32)

    def attack_loss(yb: Any, p_clean: Any, x_adv: Any) -> Any:
        logits = logits_of(x_adv, False)
        if trades:
            return tf.reduce_sum(kl_divergence(p_clean, logits))
        return tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(yb, logits))

    @tf.function(input_signature=[image, tf.TensorSpec([None], tf.int64), scalar, scalar, tf.TensorSpec([], tf.int32)])
    def adversarial_step(xb, yb, eps, step, steps):
        # TRADES attacks the clean prediction (no labels); ce ignores p_clean.
        p_clean = tf.stop_gradient(tf.nn.softmax(logits_of(xb, False))) if trades else None
        x_adv = tf.clip_by_value(xb + tf.random.uniform(tf.shape(xb), -eps, eps), 0.0, 1.0)
        for _ in tf.range(steps):
            with tf.GradientTape() as tape:
                tape.watch(x_adv)
                objective = attack_loss(yb, p_clean, x_adv)
            x_adv = tf.clip_by_value(x_adv + step * tf.sign(tape.gradient(objective, x_adv)), 0.0, 1.0)
            x_adv = xb + tf.clip_by_value(x_adv - xb, -eps, eps)
        with tf.GradientTape() as tape:
            if trades:
                clean_logits, logits = tf.split(logits_of(tf.concat([xb, x_adv], 0), True), 2)
                batch_loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(yb, clean_logits)
                                            + beta * kl_divergence(tf.nn.softmax(clean_logits), logits))
            else:
                logits = logits_of(x_adv, True)
                batch_loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(yb, logits))
        optimizer.apply_gradients(zip(tape.gradient(batch_loss, net.trainable_variables), net.trainable_variables))
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, 1), yb), tf.float32))
        return batch_loss * tf.cast(tf.shape(xb)[0], tf.float32), correct

    return adversarial_step


def kl_divergence(p: Any, logits: Any) -> Any:
    """Per-row KL(p || softmax(logits)) in nats, >= 0; computed from log-softmax so it stays
    finite when softmax(logits) underflows."""
    import tensorflow as tf

    return tf.reduce_sum(p * (tf.math.log(tf.maximum(p, 1e-12)) - tf.nn.log_softmax(logits)), axis=1)


def robust_epoch(step_fn: Any, x: np.ndarray, y: np.ndarray, order: np.ndarray, cfg: Config, epoch: int,
                 pgd_from: int) -> tuple[float, float, float, int]:
    """One epoch of ``robust_step`` over (x, y) in ``order``: FGSM-RS before epoch ``pgd_from``,
    PGD-cfg.robust_pgd_steps from it; eps ramps linearly per batch over cfg.robust_ramp_epochs.
    Returns (mean adversarial loss, adversarial accuracy, the last batch's eps, attack steps)."""
    steps = cfg.robust_pgd_steps if epoch >= pgd_from else 1
    step_ratio = 2.5 / cfg.robust_pgd_steps if epoch >= pgd_from else 1.25

    def eps_at(progress: float) -> float:
        if not cfg.robust_ramp_epochs:
            return robust_train_eps(cfg)
        return robust_train_eps(cfg) * min(1.0, (epoch + progress) / cfg.robust_ramp_epochs)

    return (*adversarial_epoch(step_fn, x, y, order, cfg.batch_size, eps_at, step_ratio, steps), steps)


def robust_train_eps(cfg: Config) -> float:
    """The eps of the robust defense's training attacks: cfg.robust_train_eps, or cfg.pgd_eps when 0."""
    return cfg.robust_train_eps or cfg.pgd_eps


def robust_record(cfg: Config, n_train: int, n_holdout: int) -> dict[str, Any]:
    """The robust defense's training record before its first epoch: the recipe and empty per-epoch lists."""
    eps = robust_train_eps(cfg)
    method = "fgsm-rs one-cycle (robust profile)" + (
        f", PGD-{cfg.robust_pgd_steps} in the last {cfg.robust_pgd_epochs} epochs" if cfg.robust_pgd_epochs else "") + (
        f", TRADES loss (beta {cfg.robust_trades_beta:g})" if cfg.robust_loss == "trades" else "") + (
        f", trained at eps {eps:g}" if eps != cfg.pgd_eps else "") + (
        f", TRADES's SmallCNN{' with SiLU' if cfg.robust_net.endswith('silu') else ''} (not the seed CNN)"
        if cfg.robust_net != "seed" else "") + (
        ", bf16 training steps" if cfg.robust_precision == "bf16" else "")
    return {"method": method, "eps": eps, "guard_eps": cfg.pgd_eps, "step_size": 1.25 * eps, "steps": 1,
            "lr_peak": cfg.robust_lr, "pgd_epochs": cfg.robust_pgd_epochs, "pgd_steps": cfg.robust_pgd_steps,
            "guard_attack": cfg.robust_guard, "network": cfg.robust_net, "precision": cfg.robust_precision,
            "ramp_epochs": cfg.robust_ramp_epochs,
            "n_train": int(n_train), "n_holdout": int(n_holdout), "budget_min": cfg.robust_budget_min,
            "loss": [], "accuracy": [],
            "epoch_eps": [], "epoch_steps": [], "holdout_clean": [], "holdout_robust": [], "epoch_time_s": [],
            "guard_time_s": [], "projected_min": []}


def log_epoch(record: dict[str, Any], cfg: Config, label: str, epoch: dict[str, Any]) -> None:
    """Append one epoch's numbers to the record's per-epoch lists and log them."""
    for key, value in epoch.items():
        record[key].append(value)
    steps = epoch["epoch_steps"]
    LOG.info("%s epoch %d/%d (eps %.3f, %s): adversarial loss %.4f, accuracy %.4f; held-out clean %.4f, %s %.4f "
             "(%.1f s)", label, len(record["loss"]), cfg.robust_epochs, epoch["epoch_eps"],
             "PGD-%d" % steps if steps > 1 else "FGSM-RS", epoch["loss"], epoch["accuracy"], epoch["holdout_clean"],
             cfg.robust_guard, epoch["holdout_robust"], epoch["epoch_time_s"])


def projected_minutes(record: dict[str, Any], cfg: Config, pgd_from: int) -> float:
    """The whole recipe's projected training minutes from the epochs measured so far: each planned
    epoch costs the last measured epoch with the same attack steps; a PGD-k epoch not yet measured
    costs the FGSM-RS epoch's training time times 0.6 + 0.4 k plus its measured guard time (an
    attack gradient costs about 2/3 of a training step; measured on the committed fp32 recipes: a
    PGD-5 epoch 2.5-2.7 and a PGD-10 epoch 4.6-4.7 times an FGSM-RS epoch)."""
    measured = dict(zip(record["epoch_steps"], zip(record["epoch_time_s"], record["guard_time_s"], strict=True)))
    fgsm_total, fgsm_guard = measured.get(1, next(iter(measured.values())))
    pgd_steps = cfg.robust_pgd_steps
    pgd_epoch = measured.get(pgd_steps, (None, None))[0]
    if pgd_epoch is None:
        pgd_epoch = (fgsm_total - fgsm_guard) * (0.6 + 0.4 * pgd_steps) + fgsm_guard
    n_pgd = cfg.robust_epochs - pgd_from
    return (pgd_from * fgsm_total + n_pgd * pgd_epoch) / 60.0


def check_budget(record: dict[str, Any], cfg: Config, pgd_from: int) -> None:
    """Raise TimeBudgetError when the projected recipe (``projected_minutes``) passes
    cfg.robust_budget_min; the recipe is never shortened to fit, so no machine gets a weaker model."""
    projected = projected_minutes(record, cfg, pgd_from)
    record["projected_min"].append(round(projected, 2))
    if projected > cfg.robust_budget_min:
        raise TimeBudgetError(
            f"the robust defense's {cfg.robust_epochs} epochs would take about {projected:.1f} min of training on "
            f"this machine (measured after epoch {len(record['loss'])}), over --robust-budget-min "
            f"{cfg.robust_budget_min:g}; "
            f"rerun with --robust-budget-min {int(projected * 1.15) + 1} (training is refused, never cut short)")
    LOG.info("robust defense: %d epochs projected at %.1f min of training (budget %g min)", cfg.robust_epochs,
             projected, cfg.robust_budget_min)


def holdout_guard(model: keras.Model, x: np.ndarray, y: np.ndarray, cfg: Config,
                  rng: np.random.Generator) -> Any:
    """A function () -> (clean accuracy, robust accuracy) of ``model`` on the held-out (x, y) at
    cfg.pgd_eps, under cfg.robust_guard: "pgd10" (PGD-10, step eps / 4, random start) or "apgd"
    (APGD-CE, 20 iterations, which also sees the gradient masking that small-step PGD misses)."""
    import tensorflow as tf

    from .attacks import linf_attack
    from .autoattack import make_apgd, run_apgd

    attack = make_linf_attack(model)
    apgd = make_apgd(model, "ce") if cfg.robust_guard == "apgd" else None  # one trace for every epoch

    def measure() -> tuple[float, float]:
        clean = float(np.mean(attack.labels(tf.constant(x)).numpy() == y))
        if apgd is not None:
            fooled = run_apgd(model, x, y, y, "ce", cfg.pgd_eps, 20, rng, cfg.attack_batch_size, apgd)[1]
        else:
            fooled = linf_attack(attack, x, y, cfg.pgd_eps, 0.25 * cfg.pgd_eps, 10, restarts=1, rng=rng,
                                 batch_size=cfg.attack_batch_size)[1]
        return clean, float(np.mean(~fooled))

    return measure
