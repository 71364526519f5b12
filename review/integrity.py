"""What keeps the review database honest beyond its own hash chain (GUI-free, stdlib only).

The audit chain inside the database detects an edited, deleted or inserted audit row, but not
an attacker who edits a row and *recomputes* the whole chain, trims the tail and fixes
``audit_head``, wipes the audit, or writes straight into the state tables. Three checks close
those gaps:

1. **Chain head outside the database**: after every commit the row count and last hash are
   written atomically (temporary file + ``os.replace``) to a sidecar next to the database,
   ``<db>.head`` (e.g. ``review.sqlite.head``). A recomputed chain, a trimmed tail or a wiped
   audit no longer matches it, nor does a database replaced by an empty one.
2. **HMAC of the sidecar** (HMAC-SHA256, RFC 2104) with a per-workstation key kept in the user
   config folder (``$RADREVIEW_CONFIG_DIR`` or platformdirs' ``user_config_dir``), so editing
   the sidecar to match a recomputed chain needs that key too. Honest limit: someone who can
   read the key (the same OS account) can still forge everything; only a key held elsewhere
   (a server, a hardware token) would stop that.
3. **State tables replayed from the audit chain**: the decisions, sign-offs, thresholds,
   per-study model packages and saved runs must equal what the audit rows say; a row inserted
   into, edited in or deleted from those tables is named.

A database written by radreview 0.1 has no sidecar (and its ``ai-run`` rows no findings digest),
so it fails check 1 on open; :func:`radreview.review.store.adopt_database` (``radreview audit
adopt --db PATH --reason TEXT``) is the explicit, logged way to adopt it once its chain is
internally intact: its ``adopted`` audit row pins the findings digests 0.1 never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, overload

__all__ = ["head_path", "read_head", "write_head", "config_dir", "audit_key", "check_head", "replay_state",
           "compare_state", "head_lock"]


def config_dir() -> Path:
    """``$RADREVIEW_CONFIG_DIR``, else platformdirs' user config folder for radreview."""
    if os.environ.get("RADREVIEW_CONFIG_DIR"):
        return Path(os.environ["RADREVIEW_CONFIG_DIR"])
    import platformdirs

    return Path(platformdirs.user_config_dir("radreview", appauthor=False))


@overload
def audit_key(create: Literal[True] = ...) -> bytes: ...
@overload
def audit_key(create: bool) -> bytes | None: ...


def audit_key(create: bool = True) -> bytes | None:
    """The workstation's 32-byte HMAC key (``audit.key`` in :func:`config_dir`, mode 0600),
    created on first use; ``None`` when absent and ``create`` is False."""
    p = config_dir() / "audit.key"
    if p.is_file():
        return bytes.fromhex(p.read_text().strip())
    if not create:
        return None
    p.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    tmp = p.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key.hex())
    os.replace(tmp, p)
    return key


def head_path(db: Path) -> Path:
    return db.with_name(db.name + ".head")


def _mac(key: bytes, count: int, last_hash: str) -> str:
    return hmac.new(key, f"radreview-audit-head|{count}|{last_hash}".encode(), hashlib.sha256).hexdigest()


@contextmanager
def head_lock(db: Path):
    """Exclusive advisory lock (``<db>.lock``, fcntl) held across commit + sidecar write, so a
    verifier never sees a committed row whose sidecar update is still to come."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory lock; the race window is one file write
        yield
        return
    fh = open(db.with_name(db.name + ".lock"), "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def write_head(db: Path, count: int, last_hash: str) -> None:
    """Atomically write the sidecar head (count, last hash, HMAC) for database ``db``."""
    key = audit_key(create=True)
    body = {"database": db.name, "count": int(count), "last_hash": last_hash, "hmac": _mac(key, int(count), last_hash)}
    p = head_path(db)
    tmp = p.with_name(p.name + f".{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        json.dump(body, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, p)


def read_head(db: Path) -> dict | None:
    p = head_path(db)
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return {"unreadable": True}


def check_head(db: Path, count: int, last_hash: str) -> list[str]:
    """Problems between the database's chain (``count`` rows ending in ``last_hash``) and its sidecar."""
    head = read_head(db)
    hp = head_path(db)
    if head is None:
        if count == 0:
            return []
        return [f"chain head file {hp.name} is missing: the {count}-row audit cannot be checked against it "
                "(deleted, or the database was copied without it; a database written by radreview 0.1, before chain "
                f"head files, is adopted once with: radreview audit adopt --db {db} --reason TEXT)"]
    if head.get("unreadable"):
        return [f"chain head file {hp.name} is unreadable"]
    out = []
    key = audit_key(create=False)
    if key is None:
        out.append(f"chain head file {hp.name} cannot be authenticated: this workstation's audit key "
                   f"({config_dir() / 'audit.key'}) is missing")
    elif not hmac.compare_digest(str(head.get("hmac", "")), _mac(key, int(head.get("count", -1)), str(head.get("last_hash", "")))):
        out.append(f"chain head file {hp.name} fails its HMAC (edited, or written with another workstation's key)")
    if head.get("count") != count or head.get("last_hash") != last_hash:
        out.append(f"audit chain does not match its head file {hp.name}: the file records {head.get('count')} rows ending in "
                   f"{str(head.get('last_hash'))[:12]}..., the database has {count} ending in {last_hash[:12]}... "
                   "(rows recomputed, trimmed, wiped, or the database replaced)")
    return out


# ---------------------------------------------------------------------- replay
def replay_state(audit_rows) -> dict:
    """State the audit rows imply: decisions, sign-offs, thresholds, packages, findings hashes, runs."""
    st: dict[str, Any] = {"decisions": [], "signoffs": [], "thresholds": {}, "packages": [], "findings": {}, "runs": [],
                          "legacy_findings": set()}
    for _id, ts, actor, action, payload, _prev, _h in audit_rows:
        try:
            p = json.loads(payload)
        except json.JSONDecodeError:
            continue
        if action == "decision":
            st["decisions"].append((p.get("study"), p.get("finding"), p.get("decision"), actor, p.get("reason") or "", ts,
                                    int(bool(p.get("addendum")))))
        elif action == "confirm-all-positives":
            for fid in p.get("findings", []):
                st["decisions"].append((p.get("study"), fid, p.get("decision"), actor, p.get("reason") or "", ts,
                                        int(bool(p.get("addendum")))))
        elif action == "sign-off":
            st["signoffs"].append((p.get("study"), actor, ts, int(bool(p.get("addendum"))),
                                   hashlib.sha256(json.dumps(p.get("findings"), sort_keys=True).encode()).hexdigest()))
        elif action == "threshold":
            st["thresholds"][(p.get("model"), p.get("label"))] = (float(p.get("new")), actor, p.get("reason") or "", ts)
        elif action == "package":
            st["packages"].append((p.get("study"), p.get("model"), p.get("version"), p.get("sha256"), ts))
        elif action == "ai-run" and "sha256" in p:
            st["findings"][p.get("study")] = p["sha256"]
            st["legacy_findings"].discard(p.get("study"))
        elif action == "ai-run":  # radreview 0.1 logged no digest of the stored findings
            st["findings"].pop(p.get("study"), None)
            st["legacy_findings"].add(p.get("study"))
        elif action == "adopted":  # the adoption pinned the digests 0.1 never logged (store.adopt_database)
            for study, digest in (p.get("findings_sha256") or {}).items():
                st["findings"][study] = digest
                st["legacy_findings"].discard(study)
        elif action == "run-saved":
            st["runs"].append((p.get("study"), p.get("model"), p.get("version"), p.get("package_sha256"),
                               json.dumps(p.get("files"), sort_keys=True), ts))
    return st


def findings_digest(findings_json_rows: list[str]) -> str:
    """SHA-256 of a study's stored findings (their canonical JSON rows, in order)."""
    return hashlib.sha256("\n".join(findings_json_rows).encode()).hexdigest()


def _diff(name: str, table: list, expected: list, fmt) -> list[str]:
    out = []
    exp = list(expected)
    for row in table:
        if row in exp:
            exp.remove(row)
        else:
            out.append(f"{name} table: row {fmt(row)} is not in the audit log (inserted or edited outside radreview)")
    for row in exp:
        out.append(f"{name} table: row {fmt(row)} recorded in the audit log is missing (deleted or edited)")
    return out


def compare_state(conn, audit_rows, allow_legacy_findings: bool = False) -> list[str]:
    """Problems between the state tables of ``conn`` and the state replayed from ``audit_rows``.

    ``allow_legacy_findings``: a study whose last AI run was logged by radreview 0.1 (an
    ``ai-run`` row without the findings' SHA-256) is not a problem (used only to adopt such a
    database, whose ``adopted`` row then pins those digests)."""
    st = replay_state(audit_rows)
    problems = []
    dec = [(s, f, d, r, reason or "", ts, int(a or 0)) for s, f, d, r, reason, ts, a in conn.execute(
        "SELECT study_key, finding_id, decision, reviewer, reason, ts, addendum FROM decisions ORDER BY id")]
    problems += _diff("decisions", dec, st["decisions"], lambda r: f"{r[1]}={r[2]} by {r[3]} at {r[5]}")
    so = [(s, r, ts, int(a or 0), hashlib.sha256(json.dumps(json.loads(fj), sort_keys=True).encode()).hexdigest())
          for s, r, ts, a, fj in conn.execute("SELECT study_key, reviewer, ts, addendum, findings_json FROM signoffs ORDER BY id")]
    problems += _diff("sign-offs", so, st["signoffs"], lambda r: f"{r[0]} by {r[1]} at {r[2]}")
    th = {(m, lab): (float(v), r, reason or "", ts) for m, lab, v, r, reason, ts in
          conn.execute("SELECT model_id, label, value, reviewer, reason, ts FROM thresholds")}
    for k in sorted(set(th) | set(st["thresholds"]), key=str):
        if th.get(k) != st["thresholds"].get(k):
            problems.append(f"thresholds table: {k[0]}/{k[1]} is {th.get(k, ('absent',))[0]} but the audit log says "
                            f"{st['thresholds'].get(k, ('absent',))[0]} (changed outside radreview)")
    pk = [tuple(r) for r in conn.execute("SELECT study_key, model_id, version, sha256, ts FROM study_packages ORDER BY id")]
    problems += _diff("study packages", pk, st["packages"], lambda r: f"{r[0]} {r[1]} {r[2]}")
    rn = [tuple(r) for r in conn.execute("SELECT study_key, model_id, version, package_sha256, files_json, ts FROM runs ORDER BY id")]
    problems += _diff("runs", rn, st["runs"], lambda r: f"{r[0]} {r[1]} {r[2]} at {r[5]}")
    for (study,) in conn.execute("SELECT DISTINCT study_key FROM findings"):
        if study not in st["findings"]:
            if allow_legacy_findings and study in st["legacy_findings"]:
                continue
            problems.append(f"findings table: findings of {study} were never recorded by an AI run in the audit log")
    for study, want in st["findings"].items():
        rows = [r[0] for r in conn.execute("SELECT data FROM findings WHERE study_key = ? ORDER BY rowid", (study,))]
        if findings_digest(rows) != want:
            problems.append(f"findings table: the findings of {study} differ from the last AI run in the audit log")
    return problems
