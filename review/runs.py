"""Run outputs kept so reopening a study restores its last AI run (GUI-free; numpy + stdlib).

Each model's outputs (label map, candidate list...) are written to the user data folder next to
the review database, ``<db folder>/runs/<study hash>/<model id>-<version>/``: arrays as
compressed ``.npz`` (``(z, y, x)``, the study grid), everything else as ``result.json``. The
SHA-256 of every file goes into the store (table ``runs``, audit row ``run-saved``), so a file
changed or swapped on disk is detected on load (:class:`RunChanged`), never shown silently.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .store import ReviewStore, _now
from radreview.studies.hashing import sha256_file
from radreview.studies.errors import RadreviewError

__all__ = ["SavedRun", "RunChanged", "encode_array", "save_run", "load_last_run", "runs_dir"]


class RunChanged(ValueError, RadreviewError):
    """A saved run file is missing or fails its SHA-256; the message names the file."""


@dataclass
class SavedRun:
    """One model's restored outputs: ``arrays`` (name -> ndarray) and ``data`` (the JSON)."""

    model_id: str
    version: str
    package_sha256: str
    ts: str
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    folder: Path | None = None


def runs_dir(store: ReviewStore) -> Path:
    """``<folder of the review database>/runs`` (the user data folder by default)."""
    return store.path.parent / "runs"




def encode_array(arr: np.ndarray) -> bytes:
    """The compressed ``.npz`` file :func:`save_run` writes for ``arr`` (one entry, ``array``),
    as bytes: made ahead, on the worker that computed the array, so saving a run on the GUI
    thread only writes bytes (deflating a 512 x 512 x 64 label map takes about 0.1 s)."""
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, array=np.asarray(arr))
    return buf.getvalue()


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save_run(store: ReviewStore, study_key: str, model_id: str, version: str, package_sha256: str,
             arrays: dict[str, np.ndarray] | None = None, data: dict | None = None, actor: str = "radreview") -> str:
    """Write one model's run outputs and record their SHA-256; returns the timestamp.

    ``arrays``: e.g. ``{"labels": uint8 (z, y, x)}``, each an array or the bytes
    :func:`encode_array` made of it; ``data``: JSON-ready (stats, candidates). A later run of
    the same model version for the same study replaces the files.
    """
    folder = runs_dir(store) / hashlib.sha256(study_key.encode()).hexdigest()[:24] / f"{model_id}-{version}"
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, arr in (arrays or {}).items():
        p = folder / f"{name}.npz"
        blob = arr if isinstance(arr, bytes) else encode_array(arr)
        _atomic(p, lambda fh, b=blob: fh.write(b))
        files[name] = {"path": str(p.relative_to(runs_dir(store))), "sha256": sha256_file(p)}
    p = folder / "result.json"
    _atomic(p, lambda fh: fh.write(json.dumps(data or {}, sort_keys=True).encode()))
    files["result.json"] = {"path": str(p.relative_to(runs_dir(store))), "sha256": sha256_file(p)}
    ts = _now()
    files_json = json.dumps(files, sort_keys=True)
    payload = {"study": study_key, "model": model_id, "version": version, "package_sha256": package_sha256, "files": files}
    return store._write(actor, "run-saved", payload,
                        "INSERT INTO runs (study_key, model_id, version, package_sha256, files_json, ts) VALUES (?, ?, ?, ?, ?, ?)",
                        (study_key, model_id, version, package_sha256, files_json, ts), ts)


def load_last_run(store: ReviewStore, study_key: str) -> dict[str, SavedRun]:
    """The last saved run of each model for a study (``{}`` when none), files checked.

    Raises
    ------
    RunChanged
        A file is missing or its SHA-256 differs from the one recorded when it was saved.
    """
    rows = store.conn.execute("SELECT model_id, version, package_sha256, files_json, ts FROM runs WHERE study_key = ? ORDER BY id",
                              (study_key,)).fetchall()
    last = {}
    for mid, version, psha, files_json, ts in rows:
        last[mid] = (version, psha, json.loads(files_json), ts)
    out = {}
    base = runs_dir(store)
    for mid, (version, psha, files, ts) in last.items():
        run = SavedRun(mid, version, psha, ts)
        for name, entry in files.items():
            p = base / entry["path"]
            if not p.is_file():
                raise RunChanged(f"{p}: saved {mid} run file is missing")
            got = sha256_file(p)
            if got != entry["sha256"]:
                raise RunChanged(f"{p}: saved {mid} run file changed since it was saved (SHA-256 {got[:12]}..., "
                                 f"recorded {entry['sha256'][:12]}...); not restored")
            run.folder = p.parent
            if name == "result.json":
                run.data = json.loads(p.read_text())
            else:
                with np.load(p, allow_pickle=False) as z:
                    run.arrays[name] = z["array"]
        out[mid] = run
    return out
