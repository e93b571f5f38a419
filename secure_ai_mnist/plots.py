"""Figures, drawn with the Agg backend, saved atomically as PNG and closed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .common import atomic_path


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> str:
    """Save a matplotlib figure as PNG atomically and close it."""
    plt = _pyplot()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    return str(path)


def plot_confusion(matrix: np.ndarray, title: str, path: Path) -> str:
    import seaborn as sns

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 6))
    sns.heatmap(matrix, annot=True, fmt="d", cmap="Blues", cbar=False, ax=ax, annot_kws={"size": 8})
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return save_figure(fig, path)


def plot_training_curves(histories: dict[str, dict[str, Any]], path: Path) -> str:
    plt = _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for name, hist in histories.items():
        epochs = np.arange(1, len(hist["loss"]) + 1)
        ax_loss.plot(epochs, hist["loss"], marker="o", label=name)
        ax_acc.plot(epochs, hist["accuracy"], marker="o", label=name)
    ax_loss.set(title="training loss", xlabel="epoch", ylabel="categorical cross-entropy")
    ax_acc.set(title="training accuracy", xlabel="epoch", ylabel="accuracy")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.grid(alpha=0.3)
        ax.legend()
    return save_figure(fig, path)


def plot_poison_examples(
    x: np.ndarray, x_poisoned: np.ndarray, y: np.ndarray, y_poisoned: np.ndarray, indices: np.ndarray, path: Path
) -> str:
    plt = _pyplot()
    shown = indices[:6]
    fig, axes = plt.subplots(2, max(len(shown), 1), figsize=(2 * max(len(shown), 1), 4.4), squeeze=False)
    for col, idx in enumerate(shown):
        axes[0, col].imshow(x[idx].squeeze(), cmap="gray", vmin=0, vmax=1)
        axes[0, col].set_title(f"original: {y[idx]}")
        axes[1, col].imshow(x_poisoned[idx].squeeze(), cmap="gray", vmin=0, vmax=1)
        axes[1, col].set_title(f"poisoned: {y_poisoned[idx]}")
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle("Training images before and after poisoning (trigger + new label)")
    return save_figure(fig, path)


def plot_fgsm_examples(
    x: np.ndarray, x_adv: np.ndarray, y: np.ndarray, pred_clean: np.ndarray, pred_adv: np.ndarray, eps: float, path: Path
) -> str:
    plt = _pyplot()
    n = min(5, len(x))
    fig, axes = plt.subplots(n, 3, figsize=(6.5, 2.2 * n), squeeze=False)
    for row in range(n):
        delta = x_adv[row] - x[row]
        axes[row, 0].imshow(x[row].squeeze(), cmap="gray", vmin=0, vmax=1)
        axes[row, 0].set_title(f"clean (true {y[row]}) -> {pred_clean[row]}", fontsize=8)
        axes[row, 1].imshow(delta.squeeze(), cmap="seismic", vmin=-eps, vmax=eps)
        axes[row, 1].set_title(f"perturbation (|d| <= {eps})", fontsize=8)
        axes[row, 2].imshow(x_adv[row].squeeze(), cmap="gray", vmin=0, vmax=1)
        axes[row, 2].set_title(f"FGSM -> {pred_adv[row]}", fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle("Baseline CNN: clean vs FGSM (predictions shown)")
    return save_figure(fig, path)


def plot_eps_curves(curves: dict[str, Any], path: Path) -> str:
    """Accuracy against eps: one line per model and attack (solid FGSM, dashed PGD)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for index, name in enumerate(curves["fgsm"]):
        color = f"C{index}"
        ax.plot(curves["eps"], curves["fgsm"][name], marker="o", color=color, label=f"{name} - FGSM")
        ax.plot(curves["eps"], curves["pgd"][name], marker="s", linestyle="--", color=color, label=f"{name} - PGD")
    ax.axhline(0.1, color="grey", linewidth=0.8, linestyle=":", label="chance")
    ax.set(xlabel="eps (L-inf, pixels in [0, 1])", ylabel="accuracy", ylim=(0, 1.02),
           title=f"White-box accuracy vs eps (n={curves['n']} test images)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_detection_view(
    activations: np.ndarray, is_poison: np.ndarray, flagged: np.ndarray, title: str, path: Path
) -> str:
    """The detector's view: the target class's penultimate activations projected on their two
    principal components, clean vs poisoned (colour) and flagged by the detector (ring)."""
    from sklearn.decomposition import PCA

    plt = _pyplot()
    points = PCA(n_components=2).fit_transform(activations) if len(activations) >= 2 else np.zeros((len(activations), 2))
    fig, ax = plt.subplots(figsize=(6.5, 5))
    ax.scatter(*points[~is_poison].T, s=4, alpha=0.35, color="C0", label=f"clean ({int((~is_poison).sum())})")
    ax.scatter(*points[is_poison].T, s=14, color="C3", label=f"poisoned ({int(is_poison.sum())})")
    ax.scatter(*points[flagged].T, s=30, facecolors="none", edgecolors="k", linewidths=0.5,
               label=f"flagged ({int(flagged.sum())})")
    ax.set(xlabel="principal component 1", ylabel="principal component 2", title=title)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_asr_bars(values: dict[str, tuple[float, float]], path: Path) -> str:
    """Clean accuracy and ASR per model (bars), e.g. before and after poison removal."""
    plt = _pyplot()
    names = list(values)
    positions = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(1.8 * len(names) + 2, 4))
    clean = [values[n][0] for n in names]
    asr = [values[n][1] for n in names]
    ax.bar(positions - 0.2, clean, width=0.4, label="clean accuracy")
    ax.bar(positions + 0.2, asr, width=0.4, label="attack success rate", color="C3")
    for x, (c, a) in enumerate(zip(clean, asr)):
        ax.text(x - 0.2, c + 0.01, f"{100 * c:.1f}%", ha="center", fontsize=8)
        ax.text(x + 0.2, a + 0.01, f"{100 * a:.1f}%", ha="center", fontsize=8)
    ax.set_xticks(positions, names)
    ax.set(ylim=(0, 1.1), ylabel="share of test images", title="Backdoor before and after poison removal")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_poison_sweep(rows: list[dict[str, Any]], path: Path) -> str:
    """ASR against poison count, one line per trigger size."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for size in sorted({r["trigger_size"] for r in rows}):
        points = sorted((r["poison_count"], r["attack_success_rate"]) for r in rows if r["trigger_size"] == size)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"trigger {size}x{size} px")
    ax.set_xscale("symlog", linthresh=10)
    ax.set(xlabel="poisoned training images", ylabel="attack success rate", ylim=(0, 1.02),
           title="Backdoor attack success vs poison count")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_trigger_families(x: np.ndarray, stamped: dict[str, np.ndarray], path: Path) -> str:
    """One column per trigger family: the clean image, the triggered image, and |difference|
    magnified (each family changes different pixels by different amounts)."""
    plt = _pyplot()
    fig, axes = plt.subplots(3, len(stamped) + 1, figsize=(2 * (len(stamped) + 1), 6.4), squeeze=False)
    axes[0, 0].imshow(x.squeeze(), cmap="gray", vmin=0, vmax=1)
    axes[0, 0].set_title("clean")
    for col, (name, image) in enumerate(stamped.items(), start=1):
        difference = np.abs(image - x).squeeze()
        axes[0, col].imshow(image.squeeze(), cmap="gray", vmin=0, vmax=1)
        axes[0, col].set_title(name, fontsize=9)
        axes[1, col].imshow(difference, cmap="magma", vmin=0, vmax=max(float(difference.max()), 1e-6))
        axes[1, col].set_title(f"|diff| max {difference.max():.2f}", fontsize=8)
        axes[2, col].imshow(image.squeeze() - x.squeeze(), cmap="coolwarm", vmin=-1, vmax=1)
        axes[2, col].set_title("signed diff", fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle("Backdoor trigger families on one training image (row 2 scaled to each trigger's largest change)")
    return save_figure(fig, path)


def plot_matrix_heatmap(rows: list[str], detectors: list[str], f1: np.ndarray, path: Path) -> str:
    """F1 per (attack point, detector), annotated, 0 = white, 1 = dark."""
    import seaborn as sns

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.6 * len(detectors) + 3, 0.45 * len(rows) + 1.5))
    sns.heatmap(f1, annot=True, fmt=".2f", cmap="Greens", vmin=0, vmax=1, xticklabels=detectors, yticklabels=rows,
                cbar_kws={"label": "F1"}, ax=ax)
    ax.set(title="Blind poison detection, F1 per attack and detector", xlabel="detector", ylabel="attack")
    return save_figure(fig, path)


def plot_robust_vs_compute(points: list[dict[str, Any]], path: Path) -> str:
    """Robust accuracy (AutoAttack, eps 0.3) against training compute, one marker per model.

    points: {label, passes (gradient computations per training image, > 0), accuracy (0-1),
    ours (bool), note (str, may be empty)}. The x axis is logarithmic: the published recipes
    spend 20 to 4,100 passes per image."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for p in points:
        ax.scatter(p["passes"], 100 * p["accuracy"], s=70 if p["ours"] else 45, marker="*" if p["ours"] else "o",
                   color="tab:red" if p["ours"] else "tab:blue", zorder=3)
        ax.annotate(f"{p['label']}\n{100 * p['accuracy']:.2f}%" + (f", {p['note']}" if p["note"] else ""),
                    (p["passes"], 100 * p["accuracy"]), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xscale("log")
    ax.margins(y=0.12)  # room above the highest point for its two-line label
    ax.set(xlabel="training compute: gradient passes per training image (epochs x (attack steps + 1))",
           ylabel="robust accuracy under AutoAttack, eps 0.3 (%)",
           title="MNIST L-inf robustness against training compute")
    ax.grid(alpha=0.3, which="both")
    return save_figure(fig, path)
