"""Per-workstation-user settings (the reviewer name), a small JSON file in the user config folder.

``$RADREVIEW_CONFIG_DIR/settings.json``, else platformdirs' ``user_config_dir("radreview")``.
Written atomically; an unreadable file counts as empty (settings are conveniences, not records).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .integrity import config_dir

__all__ = ["settings_path", "load_settings", "save_settings", "remembered_reviewer", "remember_reviewer"]


def settings_path() -> Path:
    return config_dir() / "settings.json"


def load_settings() -> dict:
    try:
        d = json.loads(settings_path().read_text())
        return d if isinstance(d, dict) else {}
    except (OSError, json.JSONDecodeError):
        return {}


def save_settings(values: dict) -> None:
    """Merge ``values`` into the settings file."""
    d = {**load_settings(), **values}
    p = settings_path()
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(d, indent=1, sort_keys=True))
    os.replace(tmp, p)


def remembered_reviewer() -> str:
    """The last reviewer name used on this workstation account, else ``$USER``, else ``""``."""
    return str(load_settings().get("reviewer") or os.environ.get("USER", ""))


def remember_reviewer(name: str) -> None:
    if name.strip():
        save_settings({"reviewer": name.strip()})
