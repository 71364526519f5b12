"""One progress bar and ETA for a whole Run AI (every model, every stage), GUI-free.

A run is a sequence of models, each a sequence of named, timed stages (MONAI Label's
pre -> infer -> inverse -> post). The overall fraction done is the weighted sum of finished
stages plus the current stage's ``done/total``; weights are each stage's share of its model's
time and each model's share of the run, taken from the last measured run of that model on
this machine (``stage_seconds``) when known, else from typical shares measured on the sample
CTs (:data:`DEFAULT_STAGES`). ETA = elapsed * (1 - f) / f, so it covers the whole run, not one
stage.
"""

from __future__ import annotations

import time
from typing import Callable

__all__ = ["RunProgress", "DEFAULT_STAGES", "learn"]

# (stage, share of the model's time): typical on 2 cores, INT8, the chest and abdomen sample CTs
DEFAULT_STAGES = {
    "segmentation": [("pre", 0.08), ("infer", 0.72), ("inverse", 0.10), ("post", 0.10)],
    "classification": [("pre", 0.15), ("candidates", 0.25), ("classify", 0.45), ("measure", 0.15)],
}
DEFAULT_MODEL_SECONDS = {"segmentation": 10.0, "classification": 6.0}

_learned: dict[str, tuple[float, dict[str, float]]] = {}  # model id -> (seconds, stage seconds)


def learn(model_id: str, seconds: float, stage_seconds: dict[str, float]) -> None:
    """Remember a finished model's measured time and stage times for the next run's weights."""
    if seconds > 0:
        _learned[model_id] = (float(seconds), {k: float(v) for k, v in (stage_seconds or {}).items()})


def _task_of(stage: str) -> str:
    for task, stages in DEFAULT_STAGES.items():
        if stage in dict(stages) and stage != "pre":
            return task
    return "segmentation"


class RunProgress:
    """Overall progress of a run over ``model_ids`` (tasks optional: ``{id: "segmentation"}``).

    Call :meth:`update` with each ``(model_id, stage, done, total)``; read :attr:`fraction`
    (0..1) and :attr:`eta_s` (seconds, ``None`` until 2 % is done).
    """

    def __init__(self, model_ids: list[str], tasks: dict[str, str] | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.model_ids = list(model_ids)
        self.tasks = dict(tasks or {})
        self.clock = clock
        self.t0 = clock()
        self.fraction = 0.0
        self._model: str | None = None
        self._finished: set[str] = set()

    def _model_seconds(self, mid: str) -> float:
        if mid in _learned:
            return _learned[mid][0]
        return DEFAULT_MODEL_SECONDS.get(self.tasks.get(mid, "segmentation"), 8.0)

    def _stages(self, mid: str, stage: str) -> list[tuple[str, float]]:
        task = self.tasks.get(mid) or _task_of(stage)
        self.tasks.setdefault(mid, task)
        base = DEFAULT_STAGES.get(task, DEFAULT_STAGES["segmentation"])
        learned = _learned.get(mid, (0, {}))[1]
        if learned and all(s in learned for s, _ in base):
            tot = sum(learned[s] for s, _ in base) or 1.0
            return [(s, learned[s] / tot) for s, _ in base]
        return base

    def update(self, model_id: str, stage: str, done: int, total: int) -> float:
        """Record progress; returns the overall fraction (never decreasing)."""
        if model_id not in self.model_ids:
            self.model_ids.append(model_id)
        if self._model is not None and self._model != model_id:
            self._finished.add(self._model)
        self._model = model_id
        stages = self._stages(model_id, stage)
        names = [s for s, _ in stages]
        if stage in names:
            i = names.index(stage)
            within = sum(w for _, w in stages[:i]) + stages[i][1] * (done / total if total else 0.0)
        else:
            within = done / total if total else 0.0
        secs = {m: self._model_seconds(m) for m in self.model_ids}
        all_s = sum(secs.values()) or 1.0
        f = sum(secs[m] for m in self._finished) / all_s + secs[model_id] / all_s * min(max(within, 0.0), 1.0)
        self.fraction = max(self.fraction, min(f, 1.0))
        return self.fraction

    @property
    def elapsed_s(self) -> float:
        return self.clock() - self.t0

    @property
    def eta_s(self) -> float | None:
        if self.fraction < 0.02:
            return None
        return max(self.elapsed_s * (1 - self.fraction) / self.fraction, 0.0)
