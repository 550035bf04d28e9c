"""Where the sinks keep what they receive: ``$SINKS_DIR`` or ``<repo>/.local/sinks``."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def sinks_dir() -> Path:
    override = os.environ.get("SINKS_DIR")
    return Path(override).expanduser().resolve() if override else REPO_ROOT / ".local" / "sinks"


def mail_dir(root: Path | None = None) -> Path:
    return (root or sinks_dir()) / "mail"


def sms_dir(root: Path | None = None) -> Path:
    return (root or sinks_dir()) / "sms"
