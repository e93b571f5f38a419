"""A blind backdoor detector: trigger reverse-engineering (Neural Cleanse, Wang et al. 2019),
then a per-sample trigger score and a data-driven cut.

What the detector may read: the training images and labels, and the model trained on them.
It never receives the poison indices, the poison count, the target class or the trigger; those
reach only the scoring code (``score_flags``). Three decisions, each read from the data:

1. Which classes are candidates: for every class, the smallest mask (and its pattern) that
   sends 99% of training images to that class when stamped on them. A class whose mask L1
   norm is an outlier on the small side (anomaly index > 2, the paper's rule: the median
   absolute deviation scaled by 1.4826, here of the log norms) is a candidate.
2. Keep the part of the candidate's mask that carries the effect: of the mask's connected
   regions (pixels above 0.5), the one that alone sends the most images of other classes to
   the candidate. (A weakly learned backdoor needs the trigger plus some class strokes to reach
   99%; the strokes are shared by many clean images, the trigger is not.) Score every training
   image of the class by how much of that trigger it carries: the mask-weighted share of the
   pattern's pixels it matches, in [0, 1].
3. Cut: a two-component Gaussian mixture on those scores. The high component is flagged only
   when it is the minority of the class and clearly separated from the rest (Ashman's D >=
   MIN_SEPARATION). Otherwise the candidate is cleared and nothing in it is flagged.

A class with flags is *suspicious*; its (mask, pattern, threshold) form the runtime check that
``predict --check-trigger`` applies to new inputs.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from .common import LOG, NUM_CLASSES
from .config import Config
from .detector_api import Detection, TriggerCheck, trigger_scores
from .model import stage_seed

if TYPE_CHECKING:
    import keras

ANOMALY_THRESHOLD = 2.0  # Wang et al. 2019: anomaly index > 2 is an outlier with > 95% probability
MIN_SEPARATION = 4.0  # Ashman's D of the two score components; 2 is "separated", 4 leaves little overlap
TARGET_HIT_RATE = 0.99  # a reversed trigger counts when it sends this share of a batch to its class


def anomaly_index(norms: np.ndarray) -> np.ndarray:
    """(median - value) / (1.4826 MAD) per class on the log of the mask norms: large for a class
    with an unusually small trigger. Log, because mask sizes are positive and right-skewed (the
    mask of a thin class such as 1 is often three times the median), which inflates a linear MAD."""
    logs = np.log(np.maximum(np.asarray(norms, np.float64), 1e-6))
    median = float(np.median(logs))
    mad = 1.4826 * float(np.median(np.abs(logs - median)))
    return (median - logs) / max(mad, 1e-12)


def reverse_triggers(model: keras.Model, x: np.ndarray, steps: int, rng: np.random.Generator,
                     batch: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each class c, the smallest (L1) mask m and pattern p in [0, 1] for which
    (1 - m) * x + m * p is classified as c: Adam on sigmoid-parametrised m and p, all classes at
    once, each with its own L1 weight raised while the trigger works on >= 99% of a batch and
    lowered while it does not. Batches are drawn from x without replacement within a batch.
    Returns (mask L1 norms (10,), masks (10, 28, 28, 1), patterns (10, 28, 28, 1)); a class
    whose trigger never worked keeps its last mask."""
    import tensorflow as tf

    from .attacks import logits_model

    net, shape = logits_model(model), x.shape[1:]
    mask_logit = tf.Variable(tf.fill((NUM_CLASSES, *shape), -4.0))
    pattern_logit = tf.Variable(tf.zeros((NUM_CLASSES, *shape)))
    weight = tf.Variable(tf.fill((NUM_CLASSES,), 1e-3))
    optimizer = tf.keras.optimizers.Adam(0.1, beta_1=0.5, beta_2=0.9)
    targets = tf.repeat(tf.range(NUM_CLASSES, dtype=tf.int64), batch)

    @tf.function(input_signature=[tf.TensorSpec([batch, *shape], tf.float32)])
    def step(xb):
        with tf.GradientTape() as tape:
            mask, pattern = tf.sigmoid(mask_logit), tf.sigmoid(pattern_logit)
            stamped = (1.0 - mask[:, None]) * xb[None] + (mask * pattern)[:, None]
            logits = net(tf.reshape(stamped, (-1, *shape)), training=False)
            loss = tf.reshape(tf.nn.sparse_softmax_cross_entropy_with_logits(targets, logits), (NUM_CLASSES, -1))
            norms = tf.reduce_sum(mask, axis=[1, 2, 3])
            total = tf.reduce_sum(tf.reduce_mean(loss, 1) + weight * norms)
        optimizer.apply_gradients(zip(tape.gradient(total, [mask_logit, pattern_logit]), [mask_logit, pattern_logit]))
        hits = tf.equal(tf.reshape(tf.argmax(logits, 1), (NUM_CLASSES, -1)), tf.reshape(targets, (NUM_CLASSES, -1)))
        return tf.reduce_mean(tf.cast(hits, tf.float32), 1), norms, mask, pattern

    best = np.full(NUM_CLASSES, np.inf)
    masks = np.zeros((NUM_CLASSES, *shape), np.float32)
    patterns = np.zeros_like(masks)
    window = np.zeros(NUM_CLASSES)
    for i in range(steps):
        hit, norms, mask, pattern = (t.numpy() for t in step(tf.constant(x[rng.choice(len(x), batch, replace=False)])))
        improved = ((hit >= TARGET_HIT_RATE) & (norms < best)) | ((i == steps - 1) & ~np.isfinite(best))
        masks[improved], patterns[improved] = mask[improved], pattern[improved]
        best[improved] = norms[improved]
        window += hit
        if (i + 1) % 10 == 0:  # the paper's schedule: adjust each class's L1 weight every few steps
            weight.assign(np.where(window / 10 >= TARGET_HIT_RATE, weight.numpy() * 1.5, weight.numpy() / 1.5))
            window[:] = 0
    return best, masks, patterns


def trigger_component(model: keras.Model, x: np.ndarray, y: np.ndarray, label: int, mask: np.ndarray,
                      pattern: np.ndarray, rng: np.random.Generator, probe: int = 256) -> tuple[np.ndarray, float]:
    """The connected region of ``mask`` (pixels > 0.5, 4-connected) that, stamped alone with
    ``pattern`` on up to ``probe`` training images of other classes, sends the most of them to
    ``label``: (the mask restricted to it, that share). The whole mask when no pixel is > 0.5."""
    from scipy import ndimage

    regions, count = ndimage.label(mask[..., 0] > 0.5)
    others = np.flatnonzero(y != label)
    sample = x[rng.choice(others, size=min(probe, len(others)), replace=False)]
    best, best_share = mask, -1.0
    for region in range(1, count + 1):
        part = mask * (regions == region)[..., None]
        stamped = (1.0 - part) * sample + part * pattern
        share = float(np.mean(np.argmax(model.predict_on_batch(stamped), axis=1) == label))
        if share > best_share:
            best, best_share = part, share
    return best.astype(np.float32), best_share


def separated_group(scores: np.ndarray, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """The high-scoring group of ``scores`` when the data show one: a two-component Gaussian
    mixture whose high component is the minority and whose Ashman's D >= MIN_SEPARATION.
    Returns (flagged bool per score, {separation, threshold, ...}); nothing flagged otherwise.
    The threshold is the midpoint of the gap between flagged and unflagged scores."""
    from sklearn.mixture import GaussianMixture

    none = np.zeros(len(scores), bool)
    if len(scores) < 4 or np.ptp(scores) == 0:
        return none, {"separation": 0.0, "threshold": None, "high_share": 0.0}
    mixture = GaussianMixture(2, random_state=seed, reg_covar=1e-6).fit(scores[:, None])
    means, variances = mixture.means_[:, 0], mixture.covariances_.ravel()
    high = int(np.argmax(means))
    separation = float(abs(means[1] - means[0]) / np.sqrt(variances.mean()))
    flagged = mixture.predict_proba(scores[:, None])[:, high] > 0.5
    share = float(flagged.mean())
    info = {"separation": round(separation, 3), "high_share": round(share, 5), "threshold": None}
    if separation < MIN_SEPARATION or not 0 < share < 0.5:
        return none, info
    info["threshold"] = float((scores[flagged].min() + scores[~flagged].max()) / 2)
    return flagged, info


def detect_backdoor(model: keras.Model, x: np.ndarray, y: np.ndarray, steps: int,
                    seed: int) -> tuple[np.ndarray, TriggerCheck, dict[str, Any]]:
    """Blind detection on a training set (x, y) and the model trained on it (module docstring).
    Returns (flagged bool (N,), the runtime TriggerCheck, a report: per-class mask norms and
    anomaly indices, candidate and suspicious classes, each candidate's cut, time_s).
    Takes no poison indices, count, target class or trigger."""
    start = time.perf_counter()
    batches, probes = np.random.default_rng(seed).spawn(2)
    norms, masks, patterns = reverse_triggers(model, x, steps, batches)
    index = anomaly_index(norms)
    candidates = [c for c in range(NUM_CLASSES) if index[c] > ANOMALY_THRESHOLD]
    flagged, cuts, kept = np.zeros(len(y), bool), {}, []
    for c in candidates:
        masks[c], alone = trigger_component(model, x, y, c, masks[c], patterns[c], probes)
        members = np.flatnonzero(y == c)
        group, cut = separated_group(trigger_scores(x[members], masks[c], patterns[c]), seed)
        cuts[str(c)] = {**cut, "trigger_pixels": int(np.sum(masks[c] > 0.5)), "trigger_alone_hit_rate": alone}
        flagged[members[group]] = True
        if group.any():
            kept.append(c)
    check = TriggerCheck(np.array(kept, np.int64), masks[kept], patterns[kept],
                         np.array([cuts[str(c)]["threshold"] for c in kept], np.float64))
    report = {"method": "trigger reverse-engineering (Neural Cleanse), its most effective mask region, trigger "
                        "score, 2-component mixture cut",
              "steps": steps, "mask_l1": [round(float(n), 3) for n in norms],
              "anomaly_index": [round(float(a), 3) for a in index], "anomaly_threshold": ANOMALY_THRESHOLD,
              "min_separation": MIN_SEPARATION, "candidate_classes": candidates, "suspicious_classes": kept,
              "cuts": cuts, "flagged": int(flagged.sum()), "time_s": round(time.perf_counter() - start, 3)}
    LOG.info("trigger reversal: mask L1 %s; candidates %s (cuts %s), suspicious %s, %d flagged (%.1f s)",
             report["mask_l1"], candidates, cuts, kept, report["flagged"], report["time_s"])
    return flagged, check, report


def detect_trigger_reversal(model: keras.Model, x: np.ndarray, y: np.ndarray, cfg: Config) -> Detection:
    """The registry's entry: ``detect_backdoor`` with the configured steps and a seed of its own."""
    flagged, check, report = detect_backdoor(model, x, y, cfg.reversal_steps, stage_seed(cfg.seed, "trigger reversal"))
    return Detection(flagged, report, check)
