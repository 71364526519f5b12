"""The review gate's typed vocabulary: kinds of finding and reviewer decisions.

``str`` enums (:class:`enum.StrEnum`): a member *is* its string value, so the JSON of the CLI,
the audit payloads and the SQLite rows stay byte-identical to the plain strings used before,
``Decision.ACCEPT == "accept"`` holds, and ``f"{d}"`` prints ``accept``. The review states
are :class:`radreview.review.findings.FindingStatus`; the runtime's task and precision enums
live in :mod:`radreview.inference`.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["FindingKind", "Decision", "DECISIONS"]


class FindingKind(StrEnum):
    """What produced a finding: one segmented label, the study-level classification answer, or
    one listed candidate region of a classification model."""

    SEGMENTATION = "segmentation"
    CLASSIFICATION = "classification"
    CANDIDATE = "candidate"


class Decision(StrEnum):
    """A reviewer's decision on one finding (the ``decision`` column of the store, whose CHECK
    constraint lists the same three values)."""

    ACCEPT = "accept"
    REJECT = "reject"
    EDIT = "edit"


#: The decision values in order, as plain strings (error messages, argparse help).
DECISIONS: tuple[str, ...] = tuple(d.value for d in Decision)
