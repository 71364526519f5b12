"""Local retrieve cache: one folder per study under the user cache folder, size-limited with
least-recently-used eviction.

``<root>/<Study Instance UID>/<Series Instance UID>/<SOP Instance UID>.dcm``; ``<root>/index.json``
keeps each study's last use (UTC seconds). :meth:`RetrieveCache.evict` removes the least
recently used studies until the cache is within its limit, never those named in ``keep`` (the
study being retrieved or open).
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RetrieveCache", "CacheEntry"]


@dataclass
class CacheEntry:
    """One cached study: its folder ``path``, size in ``bytes`` and ``last_used`` (seconds
    since the epoch, the LRU key)."""

    study_instance_uid: str
    bytes: int
    last_used: float
    path: Path


def _safe(uid: str) -> str:
    if not re.fullmatch(r"[0-9.]{1,64}", uid or ""):
        raise ValueError(f"not a DICOM UID: {uid!r}")
    return uid


class RetrieveCache:
    """The cache at ``root`` holding at most ``limit_bytes`` (checked by :meth:`evict`)."""

    def __init__(self, root: str | Path, limit_bytes: int) -> None:
        self.root = Path(root)
        self.limit_bytes = int(limit_bytes)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    @property
    def _index_path(self) -> Path:
        return self.root / "index.json"

    def _index(self) -> dict[str, float]:
        try:
            return {k: float(v) for k, v in json.loads(self._index_path.read_text()).items()}
        except (OSError, ValueError, AttributeError):
            return {}

    def _save(self, idx: dict[str, float]) -> None:
        tmp = self._index_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(idx, indent=0, sort_keys=True))
        tmp.replace(self._index_path)

    def study_dir(self, study_uid: str) -> Path:
        """The study's folder (created), marked as just used."""
        d = self.root / _safe(study_uid)
        d.mkdir(parents=True, exist_ok=True)
        self.touch(study_uid)
        return d

    def touch(self, study_uid: str, when: float | None = None) -> None:
        with self._lock:
            idx = self._index()
            idx[_safe(study_uid)] = time.time() if when is None else float(when)
            self._save(idx)

    def entries(self) -> list[CacheEntry]:
        """Cached studies, least recently used first."""
        idx = self._index()
        out = []
        for d in self.root.iterdir():
            if d.is_dir() and re.fullmatch(r"[0-9.]+", d.name):
                size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
                out.append(CacheEntry(d.name, size, idx.get(d.name, d.stat().st_mtime), d))
        return sorted(out, key=lambda e: e.last_used)

    def size(self) -> int:
        """Bytes held (all studies)."""
        return sum(e.bytes for e in self.entries())

    def evict(self, keep: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Remove least recently used studies (not in ``keep``) until within the limit; returns their UIDs."""
        removed = []
        with self._lock:
            entries = self.entries()
            total = sum(e.bytes for e in entries)
            idx = self._index()
            for e in entries:
                if total <= self.limit_bytes:
                    break
                if e.study_instance_uid in keep:
                    continue
                shutil.rmtree(e.path, ignore_errors=True)
                total -= e.bytes
                idx.pop(e.study_instance_uid, None)
                removed.append(e.study_instance_uid)
            self._save(idx)
        return removed
