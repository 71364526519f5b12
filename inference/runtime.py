"""Runtime registry: one :class:`InferTask` per model task, in the shape of MONAI Label's
``BasicInferTask`` (pre -> infer -> inverse -> post, then findings; each stage timed).

A model package's ``task`` (``model.json``) names the registered task class that runs it:

* :func:`register_task` (a class decorator, or one call) adds a task class to the registry;
* :func:`task_class` looks one up, :func:`make_task` builds it for a package;
* :meth:`InferTask.iter_run` runs the stages, yielding progress, and returns a :class:`TaskRun`
  (the task's result, its findings dict, seconds per stage).

The two shipped tasks are thin wrappers around the tested runtimes:
:class:`SegmentationTask` (``inference.segment.iter_segment``) and :class:`NoduleTask`
(``inference.classify.iter_classify``). A new task is one module with a subclass of
:class:`InferTask` and its registration; ``radreview infer`` (``cli_ops.run_infer``) and the
Run AI workflow (``viewer.workflow``) run whatever is registered.

Which installed packages fit a study is decided from each card's ``modality`` and ``fit`` block
(``body_region``, ``min_coverage_mm``) by :func:`model_fits` / :func:`models_for_study`, not
from model ids in code.
"""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import GeneratorType
from typing import Any, ClassVar

import numpy as np

from radreview.studies.jobs import drain
from radreview.studies.volume import Volume

from .package import ModelPackage, PackageError, list_packages
from .segment import SegProgress, make_session

__all__ = ["Task", "Precision", "Progress", "InferTask", "TaskRun", "register_task", "unregister_task", "task_class",
           "registered_tasks", "make_task", "run_task", "SegmentationTask", "NoduleTask", "StudyFacts", "study_facts",
           "model_fits", "models_for_study", "z_coverage_mm", "CHEST_LUNG_ML"]

#: Progress of a stage (``stage``, ``done``, ``total``, ``eta_s``); the segmentation runtime's type.
Progress = SegProgress


class Task(StrEnum):
    """Model tasks shipped with radreview (``model.json`` ``task``). Str-valued: ``Task.SEGMENTATION
    == "segmentation"``, so cards and JSON keep plain strings. A task registered elsewhere (a
    plug-in, a test) is keyed by its plain string."""

    SEGMENTATION = "segmentation"
    CLASSIFICATION = "classification"


class Precision(StrEnum):
    """Which ONNX file of a package runs (``files.fp32`` / ``files.int8`` in ``model.json``)."""

    INT8 = "int8"
    FP32 = "fp32"


@dataclass
class TaskRun:
    """What :meth:`InferTask.iter_run` returns.

    ``result`` is the task's own result object (e.g. :class:`~.segment.SegmentationResult`);
    ``findings`` the JSON-ready findings dict (``findings.json`` of ``radreview infer``);
    ``stage_seconds`` the wall time of every stage (s), ``findings`` included; ``seconds`` the total.
    """

    task: str
    model_id: str
    precision: str
    result: Any
    findings: dict
    stage_seconds: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)


class InferTask:
    """Base class of a model task (MONAI Label ``BasicInferTask`` shape).

    A subclass sets :attr:`task` and implements the stage hooks; each hook takes
    ``(volume, data)`` (``data`` is the previous stage's return value; ``pre`` gets the
    volume) and may be a generator yielding :data:`Progress` and returning its value:

    * :meth:`pre` -- resample / normalise onto the model grid;
    * :meth:`infer` -- run the network (``self.session``, opened by :meth:`open`);
    * :meth:`inverse` -- map outputs back onto the study grid;
    * :meth:`post` -- post-process; returns the task's result object;
    * :meth:`findings` -- the result as a JSON-ready dict.

    :meth:`explain` is optional: a task that supports it names its explainer in
    :attr:`explainer` (``"module:function"``, imported when first used, so this runtime never
    imports torch).
    """

    #: The ``model.json`` task this class runs.
    task: ClassVar[str] = ""
    #: Stages run by the default :meth:`iter_stages`, in order.
    stages: ClassVar[tuple[str, ...]] = ("pre", "infer", "inverse", "post")
    #: ``"module:function"`` called as ``fn(volume, package, result, target, **kw)``; ``None``: no explanation.
    explainer: ClassVar[str | None] = None

    def __init__(self, package: ModelPackage, precision: str = Precision.INT8, threads: int | None = None,
                 **options: Any) -> None:
        """Raises :class:`PackageError` when ``package`` is not a model of this task, ValueError
        for an unknown precision."""
        if str(package.task) != str(self.task):
            raise PackageError(f"model {package.id} is a {package.task} model, not {self.task}")
        try:
            self.precision = str(Precision(precision))
        except ValueError:
            raise ValueError(f"precision must be int8 or fp32, not {precision!r}") from None
        self.package = package
        self.threads = threads
        self.options = options
        self.session = None
        self.warnings: list[str] = []

    # ------------------------------------------------------------------ stages (override)
    def open(self, volume: Volume) -> None:
        """Checks before any stage: the card's modality rule (a warning or :class:`PackageError`)
        and an ONNX Runtime session on the verified file of :attr:`precision`."""
        w = self.package.check_modality(volume.info.modality)
        if w:
            self.warnings.append(w)
        self.session = make_session(self.package.file(self.precision), self.threads)

    def pre(self, volume: Volume, data: Any) -> Any:
        return data

    def infer(self, volume: Volume, data: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__}.infer")

    def inverse(self, volume: Volume, data: Any) -> Any:
        return data

    def post(self, volume: Volume, data: Any) -> Any:
        return data

    def findings(self, result: Any) -> dict:
        """JSON-ready findings of ``result`` (``findings_json()`` or ``as_dict()`` when it has one)."""
        for name in ("findings_json", "as_dict"):
            fn = getattr(result, name, None)
            if callable(fn):
                return fn()
        if isinstance(result, dict):
            return dict(result)
        raise NotImplementedError(f"{type(self).__name__}.findings")

    def save(self, run: TaskRun, volume: Volume, out_dir: Path) -> None:
        """Write ``radreview infer``'s outputs into ``out_dir``: ``findings.json`` (and whatever
        a subclass adds before it)."""
        (out_dir / "findings.json").write_text(json.dumps(run.findings, indent=1))

    # ------------------------------------------------------------------ running
    @property
    def supports_explain(self) -> bool:
        return self.explainer is not None

    def explain(self, volume: Volume, result: Any, target: str, **kw: Any):
        """The explanation of ``target`` (e.g. a label or ``candidate-N``) by :attr:`explainer`.

        Raises
        ------
        NotImplementedError
            The task has no explainer.
        ImportError
            The explainer's extra (``explain``: torch, captum) is not installed.
        """
        if self.explainer is None:
            raise NotImplementedError(f"task {self.task} has no explanation")
        mod, _, fn = self.explainer.partition(":")
        return getattr(importlib.import_module(mod), fn)(volume, self.package, result, target, **kw)

    def iter_stages(self, volume: Volume) -> Generator[Progress, None, tuple[Any, dict[str, float]]]:
        """Run :attr:`stages` in order, each timed; returns ``(result, stage_seconds)``."""
        self.open(volume)
        data: Any = volume
        stage: dict[str, float] = {}
        for name in self.stages:
            t = time.perf_counter()
            yield Progress(name, 0, 1)
            out = getattr(self, name)(volume, data)
            if isinstance(out, GeneratorType):
                out = yield from out
            data = out
            stage[name] = time.perf_counter() - t
            yield Progress(name, 1, 1, eta_s=0.0 if name == self.stages[-1] else None)
        return data, stage

    def iter_run(self, volume: Volume) -> Generator[Progress, None, TaskRun]:
        """All stages, then findings; yields progress, returns a :class:`TaskRun`. Closing the
        generator cancels the run (nothing is returned)."""
        t0 = time.perf_counter()
        result, stage = yield from self.iter_stages(volume)
        t = time.perf_counter()
        found = self.findings(result)
        stage = dict(stage, findings=time.perf_counter() - t)
        warnings = list(getattr(result, "warnings", None) or self.warnings)
        return TaskRun(str(self.task), self.package.id, self.precision, result, found, stage,
                       time.perf_counter() - t0, warnings)

    def run(self, volume: Volume) -> TaskRun:
        """Blocking form of :meth:`iter_run`."""
        return drain(self.iter_run(volume))


# ---------------------------------------------------------------------- registry
_REGISTRY: dict[str, type[InferTask]] = {}


def register_task(cls: type[InferTask] | None = None, *, replace: bool = False):
    """Register an :class:`InferTask` subclass under its :attr:`~InferTask.task` (decorator or call).

    Raises
    ------
    ValueError
        No ``task`` set, or another class is registered for it and ``replace`` is false.
    """

    def add(c: type[InferTask]) -> type[InferTask]:
        key = str(c.task)
        if not key:
            raise ValueError(f"{c.__name__}.task is not set")
        if key in _REGISTRY and _REGISTRY[key] is not c and not replace:
            raise ValueError(f"task {key!r} is already registered to {_REGISTRY[key].__name__}")
        _REGISTRY[key] = c
        return c

    return add if cls is None else add(cls)


def unregister_task(task: str) -> None:
    """Remove a registered task (a test's toy task); unknown tasks are ignored."""
    _REGISTRY.pop(str(task), None)


def registered_tasks() -> list[str]:
    """Registered task names in registration order (shipped tasks first)."""
    return list(_REGISTRY)


def task_class(task: str) -> type[InferTask]:
    """The class registered for ``task``.

    Raises
    ------
    PackageError
        No runtime registered for it (the card names a task this installation cannot run).
    """
    try:
        return _REGISTRY[str(task)]
    except KeyError:
        raise PackageError(f"no runtime for task {task!r} (registered: {', '.join(_REGISTRY) or 'none'})") from None


def make_task(package: ModelPackage, precision: str = Precision.INT8, threads: int | None = None,
              **options: Any) -> InferTask:
    """The registered task for ``package`` (see :func:`task_class`)."""
    return task_class(package.task)(package, precision, threads, **options)


def run_task(volume: Volume, package: ModelPackage, precision: str = Precision.INT8, threads: int | None = None,
             **options: Any) -> TaskRun:
    """Run ``package`` on ``volume`` to the end (blocking)."""
    return make_task(package, precision, threads, **options).run(volume)


# ---------------------------------------------------------------------- shipped tasks
@register_task
class SegmentationTask(InferTask):
    """Label maps on the study grid (:func:`~.segment.iter_segment`: its stages pre, infer,
    inverse, post are timed there). Option ``lazy_maps`` (default false) as in ``iter_segment``."""

    task = Task.SEGMENTATION
    explainer = "radreview.explain.gradcam:explain_label"

    def iter_stages(self, volume):
        from .segment import iter_segment

        res = yield from iter_segment(volume, self.package, self.precision, self.threads,
                                      lazy_maps=bool(self.options.get("lazy_maps", False)))
        return res, dict(res.stage_seconds)

    def save(self, run, volume, out_dir):
        from radreview.studies import save_label_file

        save_label_file(run.result.labels, volume, out_dir / "segmentation.nii.gz")
        super().save(run, volume, out_dir)


@register_task
class NoduleTask(InferTask):
    """Lung nodule candidates and their calibrated probability (:func:`~.classify.iter_classify`:
    stages pre, candidates, classify, measure). Option ``crop`` as in ``iter_classify``."""

    task = Task.CLASSIFICATION
    explainer = "radreview.explain.gradcam:explain_candidate"

    def iter_stages(self, volume):
        from .classify import iter_classify

        res = yield from iter_classify(volume, self.package, self.precision, self.threads,
                                       crop=bool(self.options.get("crop", False)))
        return res, dict(res.stage_seconds)


# ---------------------------------------------------------------------- which models fit
#: Aerated lung (mL) above which a CT counts as showing the chest (bowel gas and lung bases in
#: an abdominal scan stay below it; the rule default_models used before it read the cards).
CHEST_LUNG_ML = 300.0


@dataclass(frozen=True)
class StudyFacts:
    """What model fit is judged on: ``modality``; ``coverage_mm`` the extent along the patient's
    z (S) axis (mm, voxel centres plus one slice); ``regions`` the body regions seen (``"any"``
    always; ``"chest"`` when a CT holds at least :data:`CHEST_LUNG_ML` of aerated lung)."""

    modality: str
    coverage_mm: float
    regions: frozenset[str]


def z_coverage_mm(volume: Volume) -> float:
    """Extent (mm) of ``volume`` along the patient's S axis: the span of its voxel centres' S
    coordinates plus the S component of one slice step (so one slice covers one slice thickness)."""
    nx, ny, nz = volume.size
    corners = np.array([[i, j, k] for i in (0, nx - 1) for j in (0, ny - 1) for k in (0, nz - 1)], float)
    s = volume.index_to_lps(corners)[:, 2]
    step = abs(float(np.asarray(volume.direction, float)[2, 2])) * float(volume.spacing[2])
    return float(s.max() - s.min()) + step


def study_facts(volume: Volume) -> StudyFacts:
    """:class:`StudyFacts` of a study (the lung rule runs on a ~128 px in-plane subsample: well under a second)."""
    regions = {"any"}
    if volume.info.modality == "CT":
        from .lungs import lung_mask

        step = max(1, int(round(max(volume.size[:2]) / 128)))
        sub = volume.array[:, ::step, ::step]
        sp = (volume.spacing[0] * step, volume.spacing[1] * step, volume.spacing[2])
        if lung_mask(sub, sp).sum() * float(np.prod(sp)) / 1000 >= CHEST_LUNG_ML:
            regions.add("chest")
    return StudyFacts(volume.info.modality, z_coverage_mm(volume), frozenset(regions))


def model_fits(package: ModelPackage, facts: StudyFacts) -> str | None:
    """``None`` when ``package`` fits the study, else the reason it does not.

    From ``model.json``: the study's modality must be in ``modality``; one of ``fit.body_region``
    (default ``["any"]``) must be among ``facts.regions``; ``facts.coverage_mm`` must reach
    ``fit.min_coverage_mm`` (default 0). A card without a ``fit`` block is never chosen by
    default (it runs only when asked for by id); neither is a task with no registered runtime.
    """
    fit = package.meta.get("fit")
    if fit is None:
        return f"{package.id}: model.json has no fit block (run it by id)"
    if str(package.task) not in _REGISTRY:
        return f"{package.id}: no runtime for task {package.task!r}"
    if facts.modality not in package.meta["modality"]:
        return f"{package.id}: accepts {'/'.join(package.meta['modality'])}, study is {facts.modality or 'unknown'}"
    want = fit.get("body_region", ["any"])
    if not set(want) & facts.regions:
        return f"{package.id}: needs {' or '.join(want)} in the scan"
    need = float(fit.get("min_coverage_mm", 0.0))
    if facts.coverage_mm < need:
        return f"{package.id}: needs {need:g} mm along z, the scan covers {facts.coverage_mm:.1f} mm"
    return None


def models_for_study(volume: Volume, packages: list[ModelPackage] | None = None) -> list[ModelPackage]:
    """The packages (default: every installed one, :func:`~.package.list_packages`) that fit
    ``volume`` (:func:`model_fits`), ordered by task registration order, then id."""
    pkgs = list_packages() if packages is None else packages
    if not any("fit" in p.meta for p in pkgs):
        return []
    facts = study_facts(volume)
    order = {t: i for i, t in enumerate(_REGISTRY)}
    ok = [p for p in pkgs if model_fits(p, facts) is None]
    return sorted(ok, key=lambda p: (order.get(str(p.task), len(order)), p.id))
