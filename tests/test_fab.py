"""FAB-T held against an exact reference: on an affine classifier the smallest L-inf perturbation
that makes class t beat class y, inside the [0, 1] box, is a linear program, solved here by
SciPy's HiGHS. Our hyperplane projection must equal it, and FAB must reach it."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import linprog

from secure_ai_mnist.fab import linf_projection, run_fab

D, N = 28 * 28, 12


@pytest.fixture(scope="module")
def affine():
    """An affine 10-class model on 28x28 images, its weights, and images whose margins need
    perturbations of about 0.05 to 0.3 (the scale of MNIST's eps)."""
    import keras

    rng = np.random.default_rng(0)
    w, b = (rng.normal(size=(D, 10)) * 0.004).astype(np.float32), rng.normal(size=10).astype(np.float32)
    inputs = keras.Input((28, 28, 1))
    logits = keras.layers.Dense(10, name="logits")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, keras.layers.Softmax()(logits))
    model.get_layer("logits").set_weights([w, b])
    x = rng.uniform(0.0, 1.0, size=(N, 28, 28, 1)).astype(np.float32)
    return model, w, b, x


def minimal_distance(x: np.ndarray, w: np.ndarray, b: np.ndarray, y: int, t: int) -> float:
    """min ||d||_inf s.t. z_t(x + d) >= z_y(x + d), 0 <= x + d <= 1 (variables d, s; minimise s);
    inf when no point of the box reaches class t."""
    gap_w, gap_b = (w[:, t] - w[:, y]).astype(np.float64), float(b[t] - b[y])
    eye = np.eye(D)
    a_ub = np.vstack([np.r_[-gap_w, 0.0][None], np.c_[eye, -np.ones(D)], np.c_[-eye, -np.ones(D)]])
    b_ub = np.r_[x @ gap_w + gap_b, np.zeros(2 * D)]
    bounds = [(-v, 1.0 - v) for v in x] + [(0.0, None)]
    result = linprog(np.r_[np.zeros(D), 1.0], A_ub=a_ub, b_ub=b_ub, bounds=bounds, method="highs")
    assert result.status in (0, 2), result.message  # 2: infeasible
    return float(result.fun) if result.status == 0 else np.inf


def reference(affine):
    model, w, b, x = affine
    flat = x.reshape(N, -1).astype(np.float64)
    z = flat @ w + b
    y = z.argmax(axis=1)
    dist = np.array([[np.inf if t == y[i] else minimal_distance(flat[i], w, b, y[i], t) for t in range(10)]
                     for i in range(N)])
    return y, dist


def test_projection_equals_the_linear_program(affine):
    import tensorflow as tf

    model, w, b, x = affine
    y, dist = reference(affine)
    t = np.argsort(dist, axis=1)[:, 1]
    flat = x.reshape(N, -1)
    gap_w = (w[:, t] - w[:, y]).T
    need = -((flat @ w + b)[np.arange(N), t] - (flat @ w + b)[np.arange(N), y])
    step = linf_projection(tf.constant(flat), tf.constant(gap_w), tf.constant(need, tf.float32)).numpy()
    assert np.abs(step).max(axis=1) == pytest.approx(dist[np.arange(N), t], rel=1e-4)
    assert np.sum(step * gap_w, axis=1) == pytest.approx(need, rel=1e-4)  # it lands on the hyperplane
    assert (flat + step).min() >= 0.0 and (flat + step).max() <= 1.0
    assert 0.05 < dist[np.arange(N), t].min() and dist[np.arange(N), t].max() < 0.3  # MNIST's scale of eps


def test_fab_reaches_the_minimal_distance_and_decides_at_eps(affine):
    model, w, b, x = affine
    y, dist = reference(affine)
    order = np.argsort(dist, axis=1)
    nearest, second = dist[np.arange(N), order[:, 0]], dist[np.arange(N), order[:, 1]]
    _, fooled, norms = run_fab(model, x, y, order[:, 0], 0.0, 100, 8)  # eps 0: every iteration
    assert fooled.sum() == 0 and np.all(norms >= nearest * (1 - 1e-4)) and np.all(norms <= nearest * 1.01)
    # Towards the second-nearest class it may cross the nearest boundary first: never closer than that.
    _, _, norms = run_fab(model, x, y, order[:, 1], 0.0, 100, 8)
    assert np.all(norms >= nearest * (1 - 1e-4)) and np.all(norms <= second * 1.01)
    # Broken at an eps just above the distance found; never below the nearest boundary.
    x_adv, above, _ = run_fab(model, x, y, order[:, 1], float(norms.max() * 1.001), 100, 8)
    _, below, _ = run_fab(model, x, y, order[:, 1], float(nearest.min() * 0.99), 100, 8)
    assert above.all() and not below.any()
    assert np.abs(x_adv - x).max() <= norms.max() * 1.001 + 1e-6
