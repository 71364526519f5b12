"""PACS nodes and settings: a JSON file under the user config folder (platformdirs).

A node is either DICOMweb (base URL serving QIDO-RS / WADO-RS / STOW-RS, optional basic or
bearer authentication, TLS verification) or DIMSE (called AE title, host, port, our calling AE
title). :func:`resolve_node` also accepts, on the command line, a DICOMweb URL
(``http(s)://...``) or ``AET@host:port``.

Credentials live only in the settings file (written with mode 0600); ``repr`` and
:meth:`PacsNode.label` never show them, and no log line includes them.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit
from radreview.studies.errors import RadreviewError

__all__ = ["PacsNode", "PacsSettings", "PacsError", "config_path", "load_settings", "save_settings", "resolve_node",
           "DEFAULT_CALLING_AE", "DEFAULT_TIMEOUT_S"]

DEFAULT_CALLING_AE = "RADREVIEW"
#: Seconds allowed for connecting, for an association answer and for each DIMSE / HTTP response.
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_CACHE_LIMIT_MB = 4096


class PacsError(RuntimeError, RadreviewError):
    """A PACS operation failed; the message names the node (never its credentials) and the cause."""


@dataclass
class PacsNode:
    """One PACS. ``kind`` is ``"dicomweb"`` or ``"dimse"``.

    DICOMweb: ``url`` (base, e.g. ``https://pacs/dicom-web``), ``auth`` ``"none" | "basic" |
    "bearer"`` with ``username``/``password`` or ``token``, ``verify_tls`` (bool, or a CA bundle
    path). DIMSE: ``ae_title`` (called), ``host``, ``port``, ``calling_ae`` (ours).
    ``timeout`` in seconds bounds connecting and each response.
    """

    name: str
    kind: str = "dimse"
    url: str = ""
    auth: str = "none"
    username: str = ""
    password: str = field(default="", repr=False)
    token: str = field(default="", repr=False)
    verify_tls: bool | str = True
    ae_title: str = ""
    host: str = ""
    port: int = 104
    calling_ae: str = DEFAULT_CALLING_AE
    timeout: float = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.kind not in ("dicomweb", "dimse"):
            raise ValueError(f"PACS node {self.name!r}: kind must be 'dicomweb' or 'dimse', not {self.kind!r}")
        if self.kind == "dicomweb":
            if not re.match(r"^https?://", self.url or ""):
                raise ValueError(f"PACS node {self.name!r}: DICOMweb URL must start with http:// or https://, got {self.url!r}")
            if self.auth not in ("none", "basic", "bearer"):
                raise ValueError(f"PACS node {self.name!r}: auth must be none, basic or bearer, not {self.auth!r}")
            self.url = self.url.rstrip("/")
            parts = urlsplit(self.url)
            if parts.username is not None or parts.password is not None:
                # credentials in the URL move to the node, so no message or log line shows them
                self.auth, self.username, self.password = "basic", unquote(parts.username or ""), unquote(parts.password or "")
                host = parts.netloc.rpartition("@")[2]  # as written: keeps the port and IPv6 brackets
                self.url = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
        else:
            for what, val in (("AE title", self.ae_title), ("calling AE title", self.calling_ae)):
                if not val or len(val) > 16 or "\\" in val:
                    raise ValueError(f"PACS node {self.name!r}: {what} must be 1-16 characters without '\\', got {val!r}")
            if not self.host:
                raise ValueError(f"PACS node {self.name!r}: host is empty")
            self.port = int(self.port)
            if not 0 < self.port < 65536:
                raise ValueError(f"PACS node {self.name!r}: port {self.port} is not within 1..65535")
        self.timeout = float(self.timeout)

    def label(self) -> str:
        """How messages name the node: ``NAME (AET@host:port)`` or ``NAME (url)``, no credentials."""
        where = self.url if self.kind == "dicomweb" else f"{self.ae_title}@{self.host}:{self.port}"
        return where if self.name == where else f"{self.name} ({where})"

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class PacsSettings:
    """Configured nodes, the local retrieve cache (folder, size limit in MB) and our storage SCP
    (AE title and port that C-MOVE sends to; 0 = any free port, which only works with PACS that
    accept a per-request destination)."""

    nodes: dict[str, PacsNode] = field(default_factory=dict)
    cache_dir: str = ""
    cache_limit_mb: float = DEFAULT_CACHE_LIMIT_MB
    scp_ae_title: str = DEFAULT_CALLING_AE
    scp_port: int = 11112

    def cache_path(self) -> Path:
        if self.cache_dir:
            return Path(self.cache_dir)
        if os.environ.get("RADREVIEW_CACHE_DIR"):
            return Path(os.environ["RADREVIEW_CACHE_DIR"])
        import platformdirs

        return Path(platformdirs.user_cache_dir("radreview", appauthor=False)) / "pacs"


def config_path() -> Path:
    """``$RADREVIEW_PACS_CONFIG``, else ``$RADREVIEW_CONFIG_DIR/pacs.json``, else
    ``<user config folder>/radreview/pacs.json`` (platformdirs)."""
    if os.environ.get("RADREVIEW_PACS_CONFIG"):
        return Path(os.environ["RADREVIEW_PACS_CONFIG"])
    if os.environ.get("RADREVIEW_CONFIG_DIR"):
        return Path(os.environ["RADREVIEW_CONFIG_DIR"]) / "pacs.json"
    import platformdirs

    return Path(platformdirs.user_config_dir("radreview", appauthor=False)) / "pacs.json"


_NODE_FIELDS = {f.name for f in fields(PacsNode)}


def load_settings(path: str | os.PathLike | None = None) -> PacsSettings:
    """Read the settings file (absent: defaults, no nodes).

    Raises
    ------
    PacsError
        The file is not valid JSON or a node is invalid (the message names file and node).
    """
    p = Path(path) if path else config_path()
    if not p.exists():
        return PacsSettings()
    try:
        raw = json.loads(p.read_text())
        nodes = {}
        for name, d in (raw.get("nodes") or {}).items():
            unknown = set(d) - _NODE_FIELDS
            if unknown:
                raise ValueError(f"node {name!r}: unknown field(s) {', '.join(sorted(unknown))}")
            nodes[name] = PacsNode(**{**d, "name": name})
        return PacsSettings(nodes=nodes, cache_dir=raw.get("cache_dir", ""),
                            cache_limit_mb=float(raw.get("cache_limit_mb", DEFAULT_CACHE_LIMIT_MB)),
                            scp_ae_title=raw.get("scp_ae_title", DEFAULT_CALLING_AE), scp_port=int(raw.get("scp_port", 11112)))
    except (ValueError, TypeError, AttributeError) as exc:
        raise PacsError(f"{p}: invalid PACS settings: {exc}") from None


def save_settings(settings: PacsSettings, path: str | os.PathLike | None = None) -> Path:
    """Write the settings file (mode 0600: it may hold credentials); returns its path."""
    p = Path(path) if path else config_path()
    p.parent.mkdir(parents=True, exist_ok=True)
    body = {"nodes": {n: {k: v for k, v in node.as_dict().items() if k != "name"} for n, node in settings.nodes.items()},
            "cache_dir": settings.cache_dir, "cache_limit_mb": settings.cache_limit_mb,
            "scp_ae_title": settings.scp_ae_title, "scp_port": settings.scp_port}
    tmp = p.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(body, fh, indent=2)
    os.replace(tmp, p)
    return p


_AET_RE = re.compile(r"^(?P<aet>[^@\\]{1,16})@(?P<host>[^:@]+):(?P<port>\d{1,5})$")


def resolve_node(text: str, settings: PacsSettings | None = None, calling_ae: str | None = None,
                 timeout: float | None = None) -> PacsNode:
    """A node from a configured name, a DICOMweb URL or ``AET@host:port``.

    Raises
    ------
    PacsError
        Nothing of that name is configured and ``text`` is neither a URL nor ``AET@host:port``.
    """
    settings = settings if settings is not None else load_settings()
    if text in settings.nodes:
        node = settings.nodes[text]
    elif re.match(r"^https?://", text):
        node = PacsNode(name="", kind="dicomweb", url=text)
        node.name = node.url  # without any user:password@ that was in the text
    elif (m := _AET_RE.match(text)):
        node = PacsNode(name=text, kind="dimse", ae_title=m["aet"], host=m["host"], port=int(m["port"]),
                        calling_ae=settings.scp_ae_title or DEFAULT_CALLING_AE)
    else:
        known = ", ".join(sorted(settings.nodes)) or "none configured"
        raise PacsError(f"unknown PACS node {text!r}: not a configured name ({known}), "
                        "a DICOMweb URL (http(s)://...) or AET@host:port")
    if calling_ae and node.kind == "dimse":
        node = PacsNode(**{**node.as_dict(), "calling_ae": calling_ae})
    if timeout is not None:
        node = PacsNode(**{**node.as_dict(), "timeout": timeout})
    return node
