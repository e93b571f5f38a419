"""Pipeline stages declared once, and the runner that executes them in order.

A stage declares its name, the stages it reads, the configuration fields its result depends
on, the modules whose source computes it, and whether its result (a trained model or an
array) is cached. The runner applies timing, progress logging and caching the same way to
every stage. A stage's cache key covers exactly what can change its result:

- its name, its declared configuration values, and the keys of the stages it reads (so the
  data hashes, which are the key of the ``data`` stage, reach every stage that builds on it);
- the source of its declared modules (``model.py``, ``attacks.py``, ...) and of its own stage
  function. Presentation modules (``report.py``, ``plots.py``, ``inference.py``) are never
  declared, so editing them keeps every trained model and adversarial set.

A stage sees only the results it declared (reading anything else raises KeyError), so a key
cannot silently miss an input. Sub-results of one stage (for example each model of a sweep)
are cached with ``StageInputs.cached_model``, keyed by the stage's key plus their own inputs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import signal
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .cache import PACKAGE_DIR, StageCache, cached_arrays, cached_model
from .common import stage as timed_stage
from .config import Config

if TYPE_CHECKING:
    import keras
    import numpy as np

# The outputs side: rendering, the schema, the checks and provenance read results and compute none.
PRESENTATION_MODULES = frozenset({"report", "report_backdoor", "summary_schema", "checks", "provenance", "plots",
                                  "inference"})
CACHE_KINDS = (None, "model", "arrays")


# The configuration fields each kind of stage reads (its ``config``), shared by the pipeline's
# declarations in the entry script and in point_stages.py.
TRAIN = ("epochs", "batch_size", "learning_rate", "precision", "seed")
TRIGGER = ("poison_count", "target_class", "backdoor", "trigger_size", "trigger_margin", "trigger_corner",
           "trigger_position", "trigger_pattern", "blend_alpha", "sig_amplitude", "sig_frequency", "sig_clean_label",
           "wanet_grid", "wanet_strength", "wanet_noise", "wanet_cross_ratio", "seed")
DETECT = ("reversal_steps", "detection_fraction", "seed")
FGSM = ("fgsm_eps", "attack_backend")
PGD = ("pgd_eps", "pgd_step_size", "pgd_steps", "pgd_restarts", "seed")
AUTOATTACK = ("pgd_eps", "autoattack_iters", "autoattack_targets", "autoattack_restarts", "square_queries", "square_limit",
              "stability_limit", "seed")
DETECT_MODULES = ("detection", "detect_reversal", "detect_activations", "detect_clusters", "detect_knn",
                  "detect_residuals", "residual_pixels", "detect_art", "detector_api", "model", "attacks", "config")
# The time budget may refuse a run but never changes the model it trains, so it is no part of the key.
ROBUST = tuple(f.name for f in dataclasses.fields(Config)
               if f.name.startswith("robust_") and f.name != "robust_budget_min")


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline. ``run(cfg, inputs)`` computes it from the declared ``reads``.

    ``cache``: None (recomputed every run), "model" (``run`` returns (keras.Model, info)) or
    "arrays" (``run`` returns (np.ndarray, info)). ``label`` names a cached result in the log
    and in the summary's ``cache.reused``. ``key_from_result``, for a source stage such as the
    data, derives the key from what it loaded instead of from its inputs.
    """

    name: str
    run: Callable[[Config, StageInputs], Any]
    reads: tuple[str, ...] = ()
    config: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()
    cache: str | None = None
    label: str = ""
    title: str = ""
    key_from_result: Callable[[Any], Any] | None = None

    def __post_init__(self) -> None:
        if self.cache not in CACHE_KINDS:
            raise ValueError(f"stage {self.name}: cache must be one of {CACHE_KINDS}")
        presentation = PRESENTATION_MODULES & set(self.modules)
        if self.cache and presentation:
            raise ValueError(f"stage {self.name}: a cached result may not depend on {sorted(presentation)}")
        for module in self.modules:
            if not (PACKAGE_DIR / f"{module}.py").is_file():
                raise ValueError(f"stage {self.name}: no module secure_ai_mnist/{module}.py")


def source_digest(modules: Sequence[str], function: Callable[..., Any] | None = None) -> str:
    """SHA-256 over the source of the named package modules (sorted) and of ``function``."""
    digest = hashlib.sha256()
    for module in sorted(set(modules)):
        digest.update(module.encode() + b"\0" + (PACKAGE_DIR / f"{module}.py").read_bytes() + b"\0")
    if function is not None:
        digest.update(inspect.getsource(function).encode())
    return digest.hexdigest()


class StageInputs(Mapping[str, Any]):
    """The results a stage declared it reads, its output directories, and a sub-result cache."""

    def __init__(self, results: Mapping[str, Any], key: str, cache: StageCache, dirs: Mapping[str, Path]) -> None:
        self._results, self.key, self._cache, self.dirs = dict(results), key, cache, dirs

    def __getitem__(self, name: str) -> Any:
        if name not in self._results:
            raise KeyError(f"stage input {name!r} was not declared in the stage's reads")
        return self._results[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._results)

    def __len__(self) -> int:
        return len(self._results)

    @property
    def images(self) -> Path:
        return self.dirs["images"]

    def cached_model(self, label: str, train: Callable[[], tuple[keras.Model, dict[str, Any]]],
                     **inputs: Any) -> tuple[keras.Model, dict[str, Any]]:
        """A sub-result of this stage keyed by the stage's key, ``label`` and ``inputs``."""
        return cached_model(self._cache, self._cache.key(label, parent=self.key, **inputs), label, train)

    def cached_arrays(self, label: str, make: Callable[[], tuple[np.ndarray, dict[str, Any]]],
                      **inputs: Any) -> tuple[np.ndarray, dict[str, Any]]:
        """An array sub-result of this stage keyed by the stage's key, ``label`` and ``inputs``."""
        return cached_arrays(self._cache, self._cache.key(label, parent=self.key, **inputs), label, make)

    def cached_tasks(self, jobs: Mapping[str, Any], work: Callable[[Any, Any], tuple[Any, dict[str, Any]]],
                     shared: Any, cfg: Any, as_model: Callable[[Any], keras.Model] | None = None,
                     ) -> dict[str, tuple[Any, dict[str, Any]]]:
        """Each job's cached sub-result by label (keyed like ``cached_model`` / ``cached_arrays``);
        the missing ones computed by ``work(job, shared)`` through ``executor.run_tasks``: here one
        after another, or as Ray tasks with --workers / --ray-address. A task returns (array,
        info), or (weights, info) that ``as_model`` turns into a model, which is then cached."""
        from .executor import run_tasks

        keys = {label: self._cache.key(label, parent=self.key) for label in jobs}
        found: dict[str, tuple[Any, dict[str, Any]] | None] = {}
        for label in jobs:
            hit = self._cache.load_model(keys[label], label) if as_model else self._cache.load_arrays(keys[label], label)
            found[label] = hit if as_model or hit is None else (hit["array"], hit["info"])
        missing = [label for label, hit in found.items() if hit is None]
        done = run_tasks(work, [jobs[label] for label in missing], cfg.workers, cfg.ray_address, shared)
        for label, (value, info) in zip(missing, done):
            if as_model:
                value = as_model(value)
                self._cache.save_model(keys[label], value, info)
            else:
                self._cache.save_arrays(keys[label], info, array=value)
            found[label] = (value, info)
        return {label: hit for label, hit in found.items() if hit is not None}


class Runner:
    """Runs stages in order; keeps each stage's result, key and wall time."""

    def __init__(self, cfg: Config, cache: StageCache, dirs: Mapping[str, Path]) -> None:
        self.cfg, self.cache, self.dirs = cfg, cache, dirs
        self.results: dict[str, Any] = {}
        self.keys: dict[str, str] = {}
        self.timings: dict[str, float] = {}
        self.interrupted = False

    def key(self, stage: Stage) -> str:
        """The stage's cache key (see the module docstring for what it covers)."""
        return self.cache.key(
            stage.name,
            config={field: getattr(self.cfg, field) for field in stage.config},
            reads={name: self.keys[name] for name in stage.reads},
            code=source_digest(stage.modules, stage.run),
        )

    def run(self, stages: Sequence[Stage]) -> dict[str, Any]:
        """Run ``stages`` in order and return every result by stage name.

        Ctrl-C raises KeyboardInterrupt at once, and also marks the run interrupted, so that an
        interrupt that library code swallows (TensorFlow tracing can) still stops the run
        before the next stage."""
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names repeat: {names}")
        previous = self._watch_interrupts()
        try:
            for stage in stages:
                missing = [name for name in stage.reads if name not in self.results]
                if missing:
                    raise ValueError(f"stage {stage.name} reads {missing}, which no earlier stage computes")
                with timed_stage(stage.title or stage.label or stage.name, self.timings):
                    self.results[stage.name] = self._run_one(stage)
                if self.interrupted:
                    raise KeyboardInterrupt
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        return self.results

    def _watch_interrupts(self) -> Any:
        """Install the SIGINT handler (main thread only); returns the handler it replaced, or None."""
        if threading.current_thread() is not threading.main_thread():
            return None

        def interrupt(signum: int, frame: Any) -> None:
            self.interrupted = True
            raise KeyboardInterrupt

        return signal.signal(signal.SIGINT, interrupt)

    def _run_one(self, stage: Stage) -> Any:
        key = "" if stage.key_from_result else self.key(stage)
        inputs = StageInputs({name: self.results[name] for name in stage.reads}, key, self.cache, self.dirs)
        compute = lambda: stage.run(self.cfg, inputs)  # noqa: E731
        label = stage.label or stage.name
        if stage.cache == "model":
            result = cached_model(self.cache, key, label, compute)
        elif stage.cache == "arrays":
            result = cached_arrays(self.cache, key, label, compute)
        else:
            result = compute()
        if stage.key_from_result:
            key = self.cache.key(stage.name, reads={name: self.keys[name] for name in stage.reads},
                                 code=source_digest(stage.modules, stage.run), result=stage.key_from_result(result))
        self.keys[stage.name] = key
        return result
