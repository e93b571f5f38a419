"""Reuse of finished work: trained models and adversarial sets, keyed by what produced them.

A stage's key is the SHA-256 of its name and every input that shapes its result; what those
inputs are (config values, the keys of the stages it reads, the source of the code that
computes it) is decided by the stage runner in ``stages.py``. Changing a flag or a computing
module therefore invalidates exactly the stages that depend on it. Each entry records the SHA-256 of its files; a file that fails the check is
ignored (with a warning) and the stage is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .common import LOG, atomic_path, atomic_write_bytes, sha256_file

if TYPE_CHECKING:
    import keras

PACKAGE_DIR = Path(__file__).resolve().parent
ENTRY_SCRIPT = PACKAGE_DIR.parent / "secure_ai_mnist_main.py"


def code_version() -> str:
    """SHA-256 over the source of the package and the entry script (sorted by name): recorded in
    the summary to name the code of a run; stage keys hash only the modules a stage declares."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.glob("*.py")) + ([ENTRY_SCRIPT] if ENTRY_SCRIPT.is_file() else []):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


class StageCache:
    """Stage results under ``root/<key>/``; every method is a no-op when ``root`` is None."""

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self.hits: list[str] = []

    def key(self, stage: str, **inputs: Any) -> str:
        """32 hex digits of SHA-256 over the stage name and its inputs (JSON, sorted keys)."""
        payload = json.dumps({"stage": stage, "inputs": inputs}, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:32]

    def _entry(self, key: str) -> Path | None:
        if self.root is None:
            return None
        entry = self.root / key
        manifest = entry / "manifest.json"
        if not manifest.is_file():
            return None
        try:
            files = json.loads(manifest.read_text())["sha256"]
        except (OSError, ValueError, KeyError):
            files = None
        if not files or any(not (entry / n).is_file() or sha256_file(entry / n) != h for n, h in files.items()):
            LOG.warning("cache entry %s failed its SHA-256 check; recomputing", entry)
            shutil.rmtree(entry, ignore_errors=True)
            return None
        return entry

    def _commit(self, key: str, names: list[str]) -> None:
        entry = self.root / key
        manifest = {"sha256": {n: sha256_file(entry / n) for n in names}}
        atomic_write_bytes(entry / "manifest.json", json.dumps(manifest, indent=1).encode())

    def load_model(self, key: str, label: str) -> tuple[keras.Model, dict[str, Any]] | None:
        """The cached model (safe_mode, not compiled: inference only) and its info, or None."""
        entry = self._entry(key)
        if entry is None:
            return None
        import keras

        # Inference only: the optimizer state is not needed (and restoring it only warns).
        model = keras.models.load_model(entry / "model.keras", safe_mode=True, compile=False)
        self.hits.append(label)
        LOG.info("reusing cached %s (verified SHA-256, key %s)", label, key)
        return model, json.loads((entry / "info.json").read_text())

    def save_model(self, key: str, model: keras.Model, info: dict[str, Any]) -> None:
        if self.root is None:
            return
        entry = self.root / key
        with atomic_path(entry / "model.keras") as tmp:
            model.save(tmp)
        atomic_write_bytes(entry / "info.json", json.dumps(info).encode())
        self._commit(key, ["model.keras", "info.json"])

    def load_arrays(self, key: str, label: str) -> dict[str, Any] | None:
        entry = self._entry(key)
        if entry is None:
            return None
        with np.load(entry / "arrays.npz", allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        info = json.loads((entry / "info.json").read_text())
        self.hits.append(label)
        LOG.info("reusing cached %s (verified SHA-256, key %s)", label, key)
        return {**arrays, "info": info}

    def save_arrays(self, key: str, info: dict[str, Any], **arrays: np.ndarray) -> None:
        if self.root is None:
            return
        entry = self.root / key
        with atomic_path(entry / "arrays.npz") as tmp:
            with tmp.open("wb") as handle:
                np.savez(handle, **arrays)
        atomic_write_bytes(entry / "info.json", json.dumps(info).encode())
        self._commit(key, ["arrays.npz", "info.json"])


def cached_model(
    cache: StageCache, key: str, label: str, train: Callable[[], tuple[keras.Model, dict[str, Any]]]
) -> tuple[keras.Model, dict[str, Any]]:
    """The cached (model, info) for ``key``, else ``train()``'s result, stored for next time."""
    hit = cache.load_model(key, label)
    if hit is not None:
        return hit
    model, info = train()
    cache.save_model(key, model, info)
    return model, info


def cached_arrays(
    cache: StageCache, key: str, label: str, make: Callable[[], tuple[np.ndarray, dict[str, Any]]]
) -> tuple[np.ndarray, dict[str, Any]]:
    """The cached (array, info) for ``key``, else ``make()``'s result, stored for next time."""
    hit = cache.load_arrays(key, label)
    if hit is not None:
        return hit["array"], hit["info"]
    array, info = make()
    cache.save_arrays(key, info, array=array)
    return array, info
