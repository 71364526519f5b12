"""Model packages: ``resources/models/<id>/model.json`` + ONNX/state_dict files with SHA-256.

A package declares what the model accepts (modality, body part, input grid and intensity
normalisation), what it outputs (labels with colour and SNOMED CT code for DICOM SEG export),
its files with their SHA-256, calibration, review policy, training data, held-out metrics,
FP32-vs-INT8 deltas, intended use and limitations. ``model.json`` is validated with the JSON
Schema in :data:`SCHEMA` (jsonschema); errors name the offending field. A package whose hash,
schema or input check fails is refused with :class:`PackageError`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

__all__ = ["SCHEMA", "PackageError", "ModelPackage", "load_package", "list_packages", "models_dir", "sha256_file"]

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
        "task": {"enum": ["segmentation", "classification"]},
        "modality": {"type": "array", "items": {"enum": ["CT", "MR", "PT"]}, "minItems": 1},
        "modality_mismatch": {"enum": ["refuse", "warn"]},
        "body_part": {"type": "array", "items": {"type": "string"}, "minItems": 1},
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
            "properties": {"confidence_threshold": {"type": "object", "additionalProperties": {"type": "number", "minimum": 0, "maximum": 1}}},
        },
        "training_data": {"type": "array", "items": {"type": "object"}, "minItems": 1},
        "metrics": {"type": "object"},
        "int8_deltas": {"type": "object"},
        "intended_use": {"type": "string", "minLength": 10},
        "limitations": {"type": "array", "items": {"type": "string"}, "minItems": 1},
    },
}


class PackageError(ValueError):
    """A model package is refused (schema, hash, missing file, wrong input); the message says why."""


def models_dir() -> Path:
    """The shipped model packages: ``radreview.resources/models`` (wheel or source checkout alike)."""
    from importlib.resources import files

    return Path(str(files("radreview.resources"))) / "models"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class ModelPackage:
    """A validated package. ``root`` is its folder; ``meta`` the parsed ``model.json``."""

    root: Path
    meta: dict[str, Any]
    problems: list[str] = field(default_factory=list)

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

    def verify(self) -> list[str]:
        """Check every file's hash; returns the problems (empty when the package is sound)."""
        out = []
        for kind in ("fp32", "int8", "state_dict"):
            try:
                self.file(kind)
            except PackageError as exc:
                out.append(str(exc))
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
                "modality": self.meta["modality"], "labels": self.label_names()}


def _schema_errors(meta: Any) -> list[str]:
    validator = jsonschema.Draft202012Validator(SCHEMA)
    errors = []
    for err in sorted(validator.iter_errors(meta), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(p) for p in err.absolute_path) or "(top level)"
        errors.append(f"{where}: {err.message}")
    return errors


def load_package(path_or_id: str | Path, check_hashes: bool = False) -> ModelPackage:
    """Load and validate a package by folder path or by id under :func:`models_dir`.

    Raises
    ------
    PackageError
        If ``model.json`` is missing, not JSON, fails the schema (message names the field), or,
        with ``check_hashes``, a file fails its SHA-256.
    """
    p = Path(path_or_id)
    root = p if (p / "model.json").is_file() or p.is_dir() else models_dir() / str(path_or_id)
    manifest = root / "model.json"
    if not manifest.is_file():
        known = ", ".join(x.id for x in list_packages()) or "none"
        raise PackageError(f"no model package {path_or_id!r} ({manifest} not found; installed: {known})")
    try:
        meta = json.loads(manifest.read_text())
    except json.JSONDecodeError as exc:
        raise PackageError(f"{manifest}: not valid JSON ({exc})") from None
    errors = _schema_errors(meta)
    if errors:
        raise PackageError(f"{manifest}: schema check failed: " + "; ".join(errors[:5]))
    labels = meta["outputs"]["labels"]
    if len({lab["index"] for lab in labels}) != len(labels):
        raise PackageError(f"{manifest}: outputs/labels: duplicate label index")
    pkg = ModelPackage(root=root, meta=meta)
    if check_hashes:
        problems = pkg.verify()
        if problems:
            raise PackageError("; ".join(problems))
    return pkg


def list_packages() -> list[ModelPackage]:
    """Every package under :func:`models_dir` that passes the schema (bad ones are skipped)."""
    out = []
    base = models_dir()
    if not base.is_dir():
        return out
    for d in sorted(base.iterdir()):
        if (d / "model.json").is_file():
            try:
                out.append(load_package(d))
            except PackageError:
                continue
    return out
