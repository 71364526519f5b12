"""Model packages: ``resources/models/<id>/model.json`` + ONNX/state_dict files with SHA-256.

A package declares what the model accepts (modality, body part, input grid and intensity
normalisation), what it outputs (labels with colour, SNOMED CT code for DICOM SEG export, body region, minimum
plausible volume and ``role``: ``finding`` (default) or ``context``, anatomy that is listed and
drawn but never a finding to decide, see :func:`label_role`),
its files with their SHA-256, calibration, review policy, training data, held-out metrics,
FP32-vs-INT8 deltas, intended use and limitations. ``model.json`` is validated with the JSON
Schema in :data:`SCHEMA` (jsonschema); errors name the offending field. A package whose hash,
schema or input check fails is refused with :class:`PackageError`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

from radreview.studies.userdirs import user_data_dir
from radreview.studies.hashing import sha256_file  # noqa: F401 - re-exported
from radreview.studies.errors import RadreviewError

__all__ = ["SCHEMA", "PackageError", "ModelPackage", "load_package", "list_packages", "models_dir", "sha256_file",
           "user_data_dir", "user_models_dir", "model_search_path", "write_manifest", "read_manifest",
           "MANIFEST_NAME", "LABEL_ROLES", "FINDING", "CONTEXT", "label_role"]

#: File in a models folder that pins each package's :attr:`ModelPackage.package_sha256`
#: (``resources/models/manifest.json`` for the shipped packages).
MANIFEST_NAME = "manifest.json"

#: How to regenerate the shipped manifest after rebuilding a shipped package.
REGENERATE = "python -m radreview.inference.package --write-manifest"

#: Label roles a model card may give (``outputs.labels[].role``); ``finding`` when absent.
FINDING, CONTEXT = "finding", "context"
LABEL_ROLES = (FINDING, CONTEXT)


def label_role(card_label: dict) -> str:
    """``card_label["role"]`` (``"finding"`` or ``"context"``), ``"finding"`` when the card gives none.

    A *context* label (body outline, lungs, bone) is anatomy the reader uses to find their way
    and to place findings (the nodule rows' lobe or lung half), not an observation to confirm:
    :func:`radreview.review.findings.findings_from_segmentation` skips it and
    :func:`radreview.review.findings.context_from_segmentation` lists it with its volume.
    """
    return str(card_label.get("role") or FINDING)


_ID = re.compile(r"^[a-z0-9][a-z0-9._-]*$")

_LABEL = {
    "type": "object",
    "required": ["index", "name", "color", "snomed"],
    "additionalProperties": False,
    "properties": {
        "index": {"type": "integer", "minimum": 0, "maximum": 65535},
        "name": {"type": "string", "minLength": 1},
        "color": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 255}, "minItems": 3, "maxItems": 3},
        "snomed": {
            "type": "object",
            "required": ["category", "type"],
            "properties": {
                "category": {"$ref": "#/$defs/code"},
                "type": {"$ref": "#/$defs/code"},
            },
        },
        "definition": {"type": "string"},
        # where the structure lies and its smallest plausible volume: a label outside the scan's
        # coverage or below the minimum is "not assessed", not flagged (radreview.review.plausibility)
        "body_region": {"enum": ["any", "head", "neck", "chest", "abdomen", "pelvis"]},
        "min_volume_ml": {"type": "number", "minimum": 0},
        # "finding" (default): the label becomes a review finding the radiologist decides on;
        # "context": anatomical context (body outline, lungs for the nodule location, bone) that
        # is drawn, measured and listed, but never a finding to decide (radreview.review.findings)
        "role": {"enum": ["finding", "context"]},
    },
}

_FILE = {
    "type": "object",
    "required": ["path", "sha256"],
    "properties": {
        "path": {"type": "string", "minLength": 1},
        "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
    },
}

#: JSON Schema (draft 2020-12) of ``model.json``.
SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "radreview model package",
    "type": "object",
    "required": ["id", "version", "task", "modality", "body_part", "input", "outputs", "files", "calibration",
                 "review_policy", "training_data", "metrics", "intended_use", "limitations"],
    "$defs": {
        "code": {
            "type": "object",
            "required": ["scheme", "value", "meaning"],
            "properties": {"scheme": {"enum": ["SCT", "DCM", "SRT"]}, "value": {"type": "string"}, "meaning": {"type": "string"}},
        }
    },
    "properties": {
        "id": {"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]*$"},
        "version": {"type": "string", "pattern": "^[0-9]+\\.[0-9]+\\.[0-9]+$"},
        # a task with a registered runtime (radreview.inference.runtime: "segmentation",
        # "classification" ship); checked when the package runs, so a plug-in task loads
        "task": {"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]*$"},
        "modality": {"type": "array", "items": {"enum": ["CT", "MR", "PT"]}, "minItems": 1},
        "modality_mismatch": {"enum": ["refuse", "warn"]},
        "body_part": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        # which studies the model is run on by default (radreview.inference.runtime.model_fits),
        # besides "modality": a body region the scan must show, and its minimum extent along z
        "fit": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "body_region": {"type": "array", "items": {"enum": ["any", "head", "neck", "chest", "abdomen", "pelvis"]},
                                "minItems": 1},
                "min_coverage_mm": {"type": "number", "minimum": 0},
            },
        },
        "input": {
            "type": "object",
            "required": ["dimensionality", "channels", "spacing_mm", "patch_size", "orientation", "normalization"],
            "properties": {
                "dimensionality": {"enum": ["2D", "2.5D", "3D"]},
                "channels": {"type": "integer", "minimum": 1},
                "context_slices": {"type": "integer", "minimum": 0},
                "spacing_mm": {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0}, "minItems": 3, "maxItems": 3},
                "patch_size": {"type": "array", "items": {"type": "integer", "minimum": 8}, "minItems": 2, "maxItems": 3},
                "overlap": {"type": "number", "minimum": 0, "maximum": 0.9},
                "orientation": {"enum": ["LPS", "RAS"]},
                "normalization": {
                    "oneOf": [
                        {"type": "object", "required": ["method", "clip", "scale"],
                         "properties": {"method": {"const": "hu_clip_scale"},
                                        "clip": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2},
                                        "scale": {"type": "number"}, "offset": {"type": "number"}}},
                        {"type": "object", "required": ["method", "percentiles"],
                         "properties": {"method": {"const": "percentile_zscore"},
                                        "percentiles": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}}},
                    ]
                },
            },
        },
        "outputs": {
            "type": "object",
            "required": ["labels", "activation"],
            "properties": {
                "labels": {"type": "array", "items": _LABEL, "minItems": 1},
                "activation": {"enum": ["softmax", "sigmoid"]},
                "largest_component": {"type": "array", "items": {"type": "string"}},
            },
        },
        "files": {
            "type": "object",
            "required": ["fp32", "int8", "state_dict"],
            "properties": {"fp32": _FILE, "int8": _FILE, "state_dict": _FILE},
        },
        "architecture": {"type": "object"},
        "calibration": {"type": "object", "required": ["temperature"], "properties": {"temperature": {"type": "number", "exclusiveMinimum": 0}}},
        "review_policy": {
            "type": "object",
            "required": ["confidence_threshold"],
            "properties": {"confidence_threshold": {"type": "object", "additionalProperties": {"type": "number", "minimum": 0, "maximum": 1}},
                           # operating threshold on the probability: at or above it the answer is positive
                           "decision_threshold": {"type": "number", "minimum": 0, "maximum": 1},
                           "answer_label": {"type": "string"}},
        },
        "training_data": {"type": "array", "items": {"type": "object"}, "minItems": 1},
        "metrics": {"type": "object"},
        "int8_deltas": {"type": "object"},
        "intended_use": {"type": "string", "minLength": 10},
        "limitations": {"type": "array", "items": {"type": "string"}, "minItems": 1},
    },
}


class PackageError(ValueError, RadreviewError):
    """A model package is refused (schema, hash, missing file, wrong input); the message says why."""


def models_dir() -> Path:
    """The shipped model packages: ``radreview.resources/models`` (wheel or source checkout alike)."""
    from importlib.resources import files

    return Path(str(files("radreview.resources"))) / "models"


def user_models_dir() -> Path:
    """``user_data_dir() / "models"``: packages written by ``models quantize`` or added by the user."""
    return user_data_dir() / "models"


def model_search_path() -> list[tuple[str, Path]]:
    """The folders searched for a package id, first match wins, as ``(source, folder)``:

    1. ``"env"``: each folder of ``$RADREVIEW_MODELS_PATH`` (``os.pathsep``-separated), in order;
    2. ``"user"``: :func:`user_models_dir`;
    3. ``"shipped"``: :func:`models_dir`.

    The current directory is never searched (a same-name folder there is not a package).
    """
    out: list[tuple[str, Path]] = []
    for part in os.environ.get("RADREVIEW_MODELS_PATH", "").split(os.pathsep):
        if part.strip():
            out.append(("env", Path(part).expanduser().absolute()))
    out.append(("user", user_models_dir()))
    out.append(("shipped", models_dir()))
    return out


def read_manifest(folder: str | Path) -> dict[str, str] | None:
    """``{id: package_sha256}`` from ``folder/manifest.json``; ``None`` when there is none.

    Raises
    ------
    PackageError
        If the manifest exists but is not valid JSON of that shape.
    """
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        pins = data["packages"]
        if not isinstance(pins, dict) or not all(isinstance(v, str) for v in pins.values()):
            raise TypeError("packages must map id -> SHA-256")
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise PackageError(f"{path}: not a package manifest ({exc})") from None
    return dict(pins)


def write_manifest(folder: str | Path | None = None) -> Path:
    """Pin every package in ``folder`` (default: the shipped :func:`models_dir`) by its
    :attr:`ModelPackage.package_sha256` in ``folder/manifest.json``; returns its path.

    Run it (``python -m radreview.inference.package --write-manifest``) after rebuilding a
    shipped package; until then that package is refused. Packages failing their schema are not
    pinned.
    """
    base = Path(folder) if folder is not None else models_dir()
    pins = {}
    for d in sorted(base.iterdir()) if base.is_dir() else []:
        if (d / "model.json").is_file():
            try:
                pkg = _load_from(d, check_hashes=True)
            except PackageError:
                continue
            pins[pkg.id] = pkg.package_sha256
    out = base / MANIFEST_NAME
    data = {"about": "SHA-256 of each package's exact model.json bytes plus its file hashes "
                     "(ModelPackage.package_sha256); a package that no longer matches is refused",
            "regenerate": REGENERATE, "packages": pins}
    out.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return out




@dataclass
class ModelPackage:
    """A validated package. ``root`` is its folder; ``meta`` the parsed ``model.json``."""

    root: Path
    meta: dict[str, Any]
    problems: list[str] = field(default_factory=list)
    source: str = "path"  # "shipped" | "user" | "env" | "path" (loaded from an explicit folder)
    raw: bytes | None = field(default=None, repr=False)  # model.json exactly as read

    @property
    def package_sha256(self) -> str:
        """SHA-256 (hex) of the exact bytes of ``model.json`` followed by, for each file kind in
        sorted order (``fp32``, ``int8``, ``state_dict``), ``kind`` and the SHA-256 of the file
        on disk. Any edit to ``model.json`` or to a file changes it; the review store records
        it with each run. A missing file counts as the hash ``missing``.
        """
        raw = self.raw if self.raw is not None else (self.root / "model.json").read_bytes()
        h = hashlib.sha256(raw)
        for kind in sorted(self.meta["files"]):
            path = self.root / self.meta["files"][kind]["path"]
            digest = sha256_file(path) if path.is_file() else "missing"
            h.update(f"\n{kind}:{digest}".encode())
        return h.hexdigest()

    def check_pin(self) -> str | None:
        """A problem text when this package's folder has a manifest that does not pin it as it is
        now (model.json or a file changed after packaging); ``None`` when it matches or the folder
        has no manifest."""
        try:
            pins = read_manifest(self.root.parent)
        except PackageError as exc:
            return str(exc)
        if pins is None:
            return None
        where = self.root.parent / MANIFEST_NAME
        if self.id not in pins:
            return f"{self.id}: not listed in {where}; if you built this package, run {REGENERATE}"
        got = self.package_sha256
        if got != pins[self.id]:
            return (f"{self.id}: model.json or a model file changed after packaging (package SHA-256 {got[:12]}..., "
                    f"{where} pins {pins[self.id][:12]}...); reinstall radreview, or if you rebuilt it on purpose "
                    f"run {REGENERATE}")
        return None

    @property
    def id(self) -> str:
        return self.meta["id"]

    @property
    def task(self) -> str:
        return self.meta["task"]

    @property
    def labels(self) -> list[dict]:
        return sorted(self.meta["outputs"]["labels"], key=lambda lab: lab["index"])

    def label_names(self) -> list[str]:
        return [lab["name"] for lab in self.labels]

    def label_role(self, name: str) -> str:
        """The card's ``role`` of label ``name``: ``"finding"`` (the default, also for a name the
        card does not list) or ``"context"`` (anatomical context, never a finding to decide)."""
        return label_role(next((lab for lab in self.labels if lab["name"] == name), {}))

    def context_labels(self) -> list[str]:
        """Names of the labels the card marks ``"role": "context"``, in index order."""
        return [lab["name"] for lab in self.labels if label_role(lab) == CONTEXT]

    def file(self, kind: str) -> Path:
        """Path of the ``fp32``/``int8``/``state_dict`` file after checking its SHA-256.

        Raises
        ------
        PackageError
            If the file is missing or its SHA-256 differs from ``model.json``.
        """
        entry = self.meta["files"][kind]
        path = self.root / entry["path"]
        if not path.is_file():
            raise PackageError(f"{self.id}: {kind} file {path} is missing")
        got = sha256_file(path)
        if got != entry["sha256"]:
            raise PackageError(f"{self.id}: {kind} file {path.name} fails its SHA-256 check "
                               f"(model.json says {entry['sha256'][:12]}..., file is {got[:12]}...)")
        return path

    def verify(self, pin: bool = True) -> list[str]:
        """Check every file's hash and (``pin``) the folder's manifest pin; returns the problems
        (empty when the package is sound)."""
        out = []
        for kind in ("fp32", "int8", "state_dict"):
            try:
                self.file(kind)
            except PackageError as exc:
                out.append(str(exc))
        problem = self.check_pin() if pin else None
        if problem:
            out.append(problem)
        return out

    def check_modality(self, modality: str) -> str | None:
        """``None`` if the study's modality is accepted; a warning text if the card says warn.

        Raises
        ------
        PackageError
            If the modality is not accepted and the card's ``modality_mismatch`` is ``refuse``.
        """
        accepted = self.meta["modality"]
        if modality in accepted:
            return None
        msg = f"model {self.id} accepts {'/'.join(accepted)} studies; this study is {modality or 'of unknown modality'}"
        if self.meta.get("modality_mismatch", "refuse") == "warn":
            return msg
        raise PackageError(msg)

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "version": self.meta["version"], "task": self.task,
                "modality": self.meta["modality"], "labels": self.label_names(),
                "source": self.source, "path": str(self.root)}


def _schema_errors(meta: Any) -> list[str]:
    validator = jsonschema.Draft202012Validator(SCHEMA)
    errors = []
    for err in sorted(validator.iter_errors(meta), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(p) for p in err.absolute_path) or "(top level)"
        errors.append(f"{where}: {err.message}")
    return errors


def _find(model_id: str) -> tuple[str, Path] | None:
    for source, folder in model_search_path():
        if (folder / model_id / "model.json").is_file():
            return source, folder / model_id
    return None


def load_package(path_or_id: str | Path, check_hashes: bool = False) -> ModelPackage:
    """Load and validate a package by id, or by folder (a :class:`~pathlib.Path`, or a string
    that is not a bare id: it holds a path separator or is not a valid id).

    An id is looked up only in :func:`model_search_path` (``$RADREVIEW_MODELS_PATH``, the user
    models folder, the shipped packages), never in the current directory. A package found in a
    folder with a ``manifest.json`` must match its pin (:meth:`ModelPackage.check_pin`): a
    shipped package whose ``model.json`` was edited is refused.

    Raises
    ------
    PackageError
        If ``model.json`` is missing, not JSON, fails the schema (message names the field), does
        not match its manifest, or, with ``check_hashes``, a file fails its SHA-256.
    """
    text = str(path_or_id)
    if isinstance(path_or_id, Path) or os.sep in text or (os.altsep and os.altsep in text) or not _ID.match(text):
        return _load_from(Path(path_or_id), check_hashes)
    found = _find(text)
    if found is None:
        known = ", ".join(x.id for x in list_packages()) or "none"
        where = ", ".join(str(f) for _, f in model_search_path())
        raise PackageError(f"no model package {text!r} (searched {where}; installed: {known})")
    source, root = found
    pkg = _load_from(root, check_hashes, source)
    pin = pkg.check_pin()
    if pin:
        raise PackageError(pin)
    return pkg


def _load_from(root: Path, check_hashes: bool, source: str = "path") -> ModelPackage:
    manifest = root / "model.json"
    if not manifest.is_file():
        known = ", ".join(x.id for x in list_packages()) or "none"
        raise PackageError(f"no model package {str(root)!r} ({manifest} not found; installed: {known})")
    raw = manifest.read_bytes()
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PackageError(f"{manifest}: not valid JSON ({exc})") from None
    errors = _schema_errors(meta)
    if errors:
        raise PackageError(f"{manifest}: schema check failed: " + "; ".join(errors[:5]))
    labels = meta["outputs"]["labels"]
    if len({lab["index"] for lab in labels}) != len(labels):
        raise PackageError(f"{manifest}: outputs/labels: duplicate label index")
    pkg = ModelPackage(root=root, meta=meta, source=source, raw=raw)
    if check_hashes:
        problems = pkg.verify(pin=source != "path")  # an explicit folder (a build in progress) is not pinned
        if problems:
            raise PackageError("; ".join(problems))
    return pkg


def list_packages() -> list[ModelPackage]:
    """The active package of each id in :func:`model_search_path` order (an id found earlier
    shadows later ones); packages failing the schema or their manifest pin are skipped."""
    out: list[ModelPackage] = []
    seen: set[str] = set()
    for source, base in model_search_path():
        if not base.is_dir():
            continue
        for d in sorted(base.iterdir()):
            if not (d / "model.json").is_file() or d.name in seen:
                continue
            try:
                pkg = _load_from(d, False, source)
            except PackageError:
                continue
            if pkg.id in seen or pkg.check_pin():
                continue
            seen.update({pkg.id, d.name})
            out.append(pkg)
    return out


def _main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m radreview.inference.package",
                                 description="Pin model packages in a manifest.json (shipped packages by default).")
    ap.add_argument("--write-manifest", action="store_true", help="(re)write manifest.json")
    ap.add_argument("--dir", default=None, help="models folder (default: the shipped resources/models)")
    args = ap.parse_args(argv)
    if not args.write_manifest:
        ap.print_help()
        return 2
    path = write_manifest(args.dir)
    print(path.read_text(), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
