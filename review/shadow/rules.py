"""Eligibility rules of a shadow deployment: which arriving series each model runs on.

A rules file is TOML (``tomllib``) with one ``[[rule]]`` table per rule::

    [[rule]]
    name = "chest CT"
    modality = ["CT"]                      # (0008,0060) Modality, any of
    body_part = ["CHEST", "LUNG"]          # (0018,0015) Body Part Examined, any of (case-insensitive)
    min_slices = 20                        # images in the series
    slice_thickness_mm = [0.5, 8.0]        # (0018,0050) Slice Thickness, inclusive range
    description = "(?i)chest|thorax|lung"  # regular expression searched in (0008,103E) Series Description
    models = ["ct-nodule-2p5d"]

Every key but ``name`` and ``models`` is optional; a key that is given must hold for the series
(a series without the attribute does not match, and the reason says the attribute is missing).
A series takes the models of every rule it matches. One that matches none is recorded as
skipped with each rule's reason: nothing is dropped silently. Without a rules file, one rule per
model is made from its card: the card's modalities and at least :data:`DEFAULT_MIN_SLICES` slices.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

from radreview.studies.errors import RadreviewError

__all__ = ["Rule", "RulesError", "load_rules", "default_rules", "eligible_models", "DEFAULT_MIN_SLICES"]

DEFAULT_MIN_SLICES = 10
_KEYS = {"name", "modality", "body_part", "min_slices", "slice_thickness_mm", "description", "models"}


class RulesError(ValueError, RadreviewError):
    """A rules file that cannot be used (the message names the file and the rule)."""


@dataclass(frozen=True)
class Rule:
    """One eligibility rule (see the module docstring for the keys)."""

    name: str
    models: tuple[str, ...]
    modality: tuple[str, ...] = ()
    body_part: tuple[str, ...] = ()
    min_slices: int = 0
    slice_thickness_mm: tuple[float, float] | None = None
    description: str = ""
    _pattern: Any = field(default=None, compare=False, repr=False)

    def check(self, attrs: dict[str, Any]) -> list[str]:
        """Why ``attrs`` (the series attributes of :mod:`radreview.review.shadow.intake`) do not
        match; an empty list when they do."""
        why = []
        mod = str(attrs.get("modality") or "")
        if self.modality and mod.upper() not in self.modality:
            why.append(f"modality {mod or 'missing'} not in {'/'.join(self.modality)}")
        if self.body_part:
            bp = str(attrs.get("body_part") or "").upper()
            if not bp:
                why.append("Body Part Examined missing")
            elif bp not in self.body_part:
                why.append(f"body part {bp} not in {'/'.join(self.body_part)}")
        n = int(attrs.get("slices") or 0)
        if self.min_slices and n < self.min_slices:
            why.append(f"{n} slice(s), fewer than {self.min_slices}")
        if self.slice_thickness_mm is not None:
            t = attrs.get("slice_thickness_mm")
            lo, hi = self.slice_thickness_mm
            if t is None:
                why.append("Slice Thickness missing")
            elif not lo <= float(t) <= hi:
                why.append(f"slice thickness {float(t):g} mm outside {lo:g}-{hi:g} mm")
        if self._pattern is not None and not self._pattern.search(str(attrs.get("description") or "")):
            why.append(f"description {attrs.get('description')!r} does not match {self.description!r}")
        return why


def _rule(d: dict[str, Any], where: str) -> Rule:
    unknown = set(d) - _KEYS
    if unknown:
        raise RulesError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(_KEYS))})")
    if not d.get("name") or not isinstance(d.get("models"), list) or not d["models"]:
        raise RulesError(f"{where}: a rule needs a name and a non-empty list of models")

    def strs(key: str) -> tuple[str, ...]:
        v = d.get(key, [])
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise RulesError(f"{where}: {key} must be a string or a list of strings")
        return tuple(x.upper() for x in v)

    rng = d.get("slice_thickness_mm")
    if rng is not None:
        if not (isinstance(rng, list) and len(rng) == 2 and all(isinstance(x, (int, float)) for x in rng)
                and rng[0] <= rng[1]):
            raise RulesError(f"{where}: slice_thickness_mm must be [min, max] in mm")
        rng = (float(rng[0]), float(rng[1]))
    pattern = None
    if d.get("description"):
        try:
            pattern = re.compile(str(d["description"]))
        except re.error as exc:
            raise RulesError(f"{where}: description is not a valid regular expression ({exc})") from None
    try:
        min_slices = int(d.get("min_slices", 0))
    except (TypeError, ValueError):
        raise RulesError(f"{where}: min_slices must be an integer") from None
    return Rule(name=str(d["name"]), models=tuple(str(m) for m in d["models"]), modality=strs("modality"),
                body_part=strs("body_part"), min_slices=min_slices, slice_thickness_mm=rng,
                description=str(d.get("description") or ""), _pattern=pattern)


def load_rules(path: str | os.PathLike) -> list[Rule]:
    """Read a rules file.

    Raises
    ------
    RulesError
        Unreadable, not TOML, no ``[[rule]]``, or a rule with an unknown key or a bad value.
    """
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise RulesError(f"{path}: cannot read the rules file ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise RulesError(f"{path}: not valid TOML ({exc})") from None
    rules = data.get("rule")
    if not isinstance(rules, list) or not rules:
        raise RulesError(f"{path}: no [[rule]] tables")
    return [_rule(r, f"{path}: rule {i + 1}") for i, r in enumerate(rules)]


def default_rules(model_ids: list[str]) -> list[Rule]:
    """One rule per model from its card: its modalities, at least :data:`DEFAULT_MIN_SLICES` slices."""
    from radreview.inference.package import load_package

    out = []
    for mid in model_ids:
        pkg = load_package(mid, check_hashes=False)
        mods = pkg.meta.get("modality") or []
        mods = [mods] if isinstance(mods, str) else list(mods)
        out.append(Rule(name=f"{mid} (from its card)", models=(mid,), modality=tuple(m.upper() for m in mods),
                        min_slices=DEFAULT_MIN_SLICES))
    return out


def eligible_models(rules: list[Rule], attrs: dict[str, Any]) -> tuple[list[str], str]:
    """``(models, reason)``: the models of every matching rule (in rule order, each once), and
    when there are none, why each rule did not match."""
    models: list[str] = []
    reasons = []
    for r in rules:
        why = r.check(attrs)
        if why:
            reasons.append(f"rule {r.name!r}: " + "; ".join(why))
        else:
            models += [m for m in r.models if m not in models]
    return models, ("" if models else " | ".join(reasons))
