"""Backdoor trigger families, one function each with one signature, and the registry that names them.

Every family is ``stamp(x, spec) -> x'``: x is a batch of images (N, 28, 28[, 1]) with values in
[0, 1] (float) or [0, 255] (uint8), and x' is a new array of the same shape and dtype, still in
range; x itself is never modified. ``spec`` (a frozen ``TriggerSpec``) holds every setting,
including the seed of a family's random parts (the blend image, the warping field), so the same
spec always draws the same trigger. The families, as their papers lay them out:

- ``badnets`` (Gu et al. 2017): a size x size patch at a corner (or a given row, column), solid
  white, a checkerboard, or a fixed random binary pattern. Only the patch's pixels change.
- ``blended`` (Chen et al. 2017): a fixed uniform-noise image blended over the whole image at alpha.
- ``sig`` (Barni et al. 2019): an additive horizontal sinusoid of set amplitude and frequency.
  Its clean-label variant poisons only target-class images and keeps their labels.
- ``wanet`` (Nguyen and Tran 2021): a smooth random warping field (a k x k grid of random
  offsets, upsampled bicubically, times the strength s). Its noise mode adds "cross" images that
  carry a randomly perturbed field and keep their true labels, so the model learns the exact field.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

FAMILIES = ("badnets", "blended", "sig", "wanet")
CORNERS = ("bottom-right", "bottom-left", "top-left", "top-right")
PATTERNS = ("solid", "checkerboard", "random")


@dataclass(frozen=True)
class TriggerSpec:
    """One trigger: its family and every setting. ``position`` (row, column) of the patch's
    top-left pixel overrides ``corner`` and ``margin`` when given."""

    family: str = "badnets"
    size: int = 3
    margin: int = 1
    corner: str = "bottom-right"
    position: tuple[int, int] | None = None
    pattern: str = "solid"
    alpha: float = 0.2
    amplitude: float = 0.1
    frequency: float = 6.0
    clean_label: bool = False
    grid: int = 4
    strength: float = 0.5
    noise_mode: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown trigger family {self.family!r}; choose one of {', '.join(FAMILIES)}")
        if self.corner not in CORNERS or self.pattern not in PATTERNS:
            raise ValueError(f"unknown trigger corner {self.corner!r} or pattern {self.pattern!r}")

    def describe(self) -> dict[str, object]:
        """The settings that define this family's trigger (JSON-ready)."""
        common = {"family": self.family, "seed": self.seed}
        if self.family == "badnets":
            return {**common, "size": self.size, "pattern": self.pattern, "value": 1.0,
                    **({"position": list(self.position)} if self.position else
                       {"corner": self.corner, "margin": self.margin})}
        if self.family == "blended":
            return {**common, "alpha": self.alpha, "image": "uniform noise in [0, 1]"}
        if self.family == "sig":
            return {**common, "amplitude": self.amplitude, "frequency": self.frequency, "clean_label": self.clean_label}
        return {**common, "grid": self.grid, "strength": self.strength, "noise_mode": self.noise_mode}


def _as_float(x: np.ndarray) -> tuple[np.ndarray, float]:
    """(x as float64 in [0, 1], the scale to return to x's range)."""
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    return np.asarray(x, np.float64) / scale, scale


def _back(values: np.ndarray, like: np.ndarray, scale: float) -> np.ndarray:
    values = np.clip(values, 0.0, 1.0) * scale
    return (np.rint(values) if like.dtype == np.uint8 else values).astype(like.dtype)


def patch_origin(spec: TriggerSpec, height: int = 28, width: int = 28) -> tuple[int, int]:
    """(row, column) of the patch's top-left pixel."""
    if spec.position is not None:
        return spec.position
    top = height - spec.margin - spec.size if spec.corner.startswith("bottom") else spec.margin
    left = width - spec.margin - spec.size if spec.corner.endswith("right") else spec.margin
    return top, left


def patch_pixels(spec: TriggerSpec) -> np.ndarray:
    """bool (size, size): which pixels of the patch are set to white."""
    rows, cols = np.indices((spec.size, spec.size))
    if spec.pattern == "solid":
        return np.ones((spec.size, spec.size), bool)
    if spec.pattern == "checkerboard":
        return (rows + cols) % 2 == 0
    bits = np.random.default_rng(spec.seed).random((spec.size, spec.size)) < 0.5
    bits.flat[0] = True  # a random pattern never comes out empty
    return bits


def stamp_badnets(x: np.ndarray, spec: TriggerSpec) -> np.ndarray:
    """White (1.0, or 255 for uint8) on the patch's set pixels; nothing else changes."""
    triggered = np.array(x, copy=True)
    top, left = patch_origin(spec, x.shape[1], x.shape[2])
    rows, cols = np.indices((spec.size, spec.size))
    keep = patch_pixels(spec)
    triggered[:, top + rows[keep], left + cols[keep], ...] = 255 if triggered.dtype == np.uint8 else 1.0
    return triggered


def blend_image(spec: TriggerSpec, height: int = 28, width: int = 28) -> np.ndarray:
    """The fixed noise image (height, width) in [0, 1], drawn from spec.seed."""
    return np.random.default_rng(spec.seed).random((height, width))


def stamp_blended(x: np.ndarray, spec: TriggerSpec) -> np.ndarray:
    """(1 - alpha) x + alpha * noise image, every pixel."""
    values, scale = _as_float(x)
    noise = blend_image(spec, x.shape[1], x.shape[2]).reshape((1, x.shape[1], x.shape[2]) + (1,) * (x.ndim - 3))
    return _back((1.0 - spec.alpha) * values + spec.alpha * noise, x, scale)


def sig_signal(spec: TriggerSpec, height: int = 28, width: int = 28) -> np.ndarray:
    """amplitude * sin(2 pi column frequency / width), the same on every row: (height, width)."""
    wave = spec.amplitude * np.sin(2 * np.pi * np.arange(width) * spec.frequency / width)
    return np.tile(wave, (height, 1))


def stamp_sig(x: np.ndarray, spec: TriggerSpec) -> np.ndarray:
    """x + the sinusoid, clipped to the pixel range."""
    values, scale = _as_float(x)
    signal = sig_signal(spec, x.shape[1], x.shape[2]).reshape((1, x.shape[1], x.shape[2]) + (1,) * (x.ndim - 3))
    return _back(values + signal, x, scale)


def warp_field(spec: TriggerSpec, height: int = 28, width: int = 28) -> np.ndarray:
    """The warping field (height, width, 2) in pixels (row, column offsets): a grid x grid array of
    uniform offsets in [-1, 1], normalised to mean |offset| 1, upsampled bicubically, times
    strength / size in WaNet's [-1, 1] coordinates (converted here to pixels)."""
    from scipy import ndimage

    coarse = np.random.default_rng(spec.seed).uniform(-1, 1, (2, spec.grid, spec.grid))
    coarse /= np.mean(np.abs(coarse))
    fine = np.stack([ndimage.zoom(c, (height / spec.grid, width / spec.grid), order=3, mode="nearest")
                     for c in coarse], axis=-1)[:height, :width]
    # WaNet offsets the sampling grid in [-1, 1] coordinates by s * field / size; one unit there is
    # (size - 1) / 2 pixels (align_corners=True).
    return spec.strength * fine / np.array([height, width]) * (np.array([height, width]) - 1) / 2


def warp(x: np.ndarray, field: np.ndarray) -> np.ndarray:
    """Each image of x (N, H, W[, 1]) resampled bilinearly at (row, col) + field (H, W, 2) or
    per-image fields (N, H, W, 2), the sampling points clamped to the image."""
    from scipy import ndimage

    values, scale = _as_float(x)
    flat = values.reshape(values.shape[:3])
    height, width = flat.shape[1:]
    rows, cols = np.indices((height, width), dtype=np.float64)
    fields = np.broadcast_to(field, (len(flat), height, width, 2))
    out = np.empty_like(flat)
    for i, image in enumerate(flat):
        where = [np.clip(rows + fields[i, ..., 0], 0, height - 1), np.clip(cols + fields[i, ..., 1], 0, width - 1)]
        out[i] = ndimage.map_coordinates(image, where, order=1)
    return _back(out.reshape(values.shape), x, scale)


def stamp_wanet(x: np.ndarray, spec: TriggerSpec) -> np.ndarray:
    """x resampled through the family's fixed warping field."""
    return warp(x, warp_field(spec, x.shape[1], x.shape[2]))


def cross_images(x: np.ndarray, spec: TriggerSpec, rng: np.random.Generator) -> np.ndarray:
    """WaNet's noise mode: x warped by the trigger's field plus, per image, uniform noise of up to
    half a pixel (WaNet's 1/size in [-1, 1] coordinates), so near-misses of the field do not fire."""
    height, width = x.shape[1], x.shape[2]
    noise = rng.uniform(-1, 1, (len(x), height, width, 2)) * (np.array([height, width]) - 1) / 2 / np.array([height, width])
    return warp(x, warp_field(spec, height, width)[None] + noise)


STAMPS: dict[str, Callable[[np.ndarray, TriggerSpec], np.ndarray]] = {
    "badnets": stamp_badnets, "blended": stamp_blended, "sig": stamp_sig, "wanet": stamp_wanet,
}


def stamp(x: np.ndarray, spec: TriggerSpec) -> np.ndarray:
    """The family's trigger on every image of x (module docstring): same shape, dtype and range."""
    return STAMPS[spec.family](x, spec)


def changed_pixels(spec: TriggerSpec, probe: np.ndarray) -> np.ndarray:
    """bool (H, W): the pixels this trigger changes on any image of ``probe``."""
    return np.any(stamp(probe, spec) != probe, axis=tuple(i for i in range(probe.ndim) if i not in (1, 2)))
