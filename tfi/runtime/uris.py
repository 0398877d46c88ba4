"""URIs that may carry a password: masking for logs and records, and safe local paths."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from tfi.core.errors import ConfigError

_PASSWORD_IN_TEXT = re.compile(
    r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<user>[^:/@\s]*):[^@/\s]*@"
)


def mask_uri(uri: str) -> str:
    """``postgresql://user:***@host/db`` for ``postgresql://user:secret@host/db``."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


def mask_text(text: str) -> str:
    """Mask every ``scheme://user:password@`` inside free text (log lines, error messages)."""
    return _PASSWORD_IN_TEXT.sub(r"\g<scheme>\g<user>:***@", text)


def has_password(uri: str) -> bool:
    return urlsplit(uri).password is not None


def inside(base: str | Path, path: str | Path, what: str) -> Path:
    """Resolve ``path`` relative to ``base`` and refuse it if it escapes ``base``."""
    root = Path(base).resolve()
    resolved = (root / path).resolve()
    if not resolved.is_relative_to(root):
        raise ConfigError(f"{what} {path} is outside the output location {root}")
    return resolved


def sqlite_path(uri: str) -> Path | None:
    """The file behind a ``sqlite:///`` URI, or None for other schemes and in-memory DBs."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///")
    return Path(path) if path and path != ":memory:" else None
