"""URIs that may carry a password: masking for logs and records, and safe local paths."""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from tfi.core.errors import ConfigError

# The userinfo of ``scheme://user:password@host``: the password may hold any character but
# whitespace (PostgreSQL accepts ``/``, ``?``, ``#`` and ``@`` unencoded), so it runs to the
# last ``@`` of the word. Masking too much is harmless; masking too little leaks.
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<user>[^:/@\s]*):\S*@")
# ``?password=...`` in a database URL, ``password=...`` in a libpq keyword string.
_SECRET_PARAMETER = re.compile(
    r"(?P<key>(?:^|(?<=[?&;\s]))(?:ssl)?(?:password|passwd|pwd|pass|secret|token"
    r"|access_token|api_?key)=)[^&;#\s]*",
    re.IGNORECASE,
)


def mask_text(text: str) -> str:
    """Mask every password a URI or connection string can carry inside ``text``: the userinfo
    of ``scheme://user:password@`` (any characters) and password-like query parameters."""
    text = _USERINFO.sub(r"\g<scheme>\g<user>:***@", text)
    return _SECRET_PARAMETER.sub(r"\g<key>***", text)


def mask_uri(uri: str) -> str:
    """``postgresql://user:***@host/db`` for ``postgresql://user:secret@host/db``."""
    return mask_text(uri)


def has_password(uri: str) -> bool:
    return mask_text(uri) != uri


def inside(base: str | Path, path: str | Path, what: str) -> Path:
    """Resolve ``path`` relative to ``base`` and refuse it if it escapes ``base``."""
    root = Path(base).resolve()
    resolved = (root / path).resolve()
    if not resolved.is_relative_to(root):
        raise ConfigError(f"{what} {path} is outside the output location {root}")
    return resolved


def sqlite_path(uri: str) -> Path | None:
    """The file behind a SQLite URI of any SQLAlchemy driver (``sqlite:///``,
    ``sqlite+pysqlite:///``, ...), or None for other schemes and in-memory DBs."""
    try:
        url = make_url(uri)
    except (ArgumentError, ValueError):
        return None
    if url.get_backend_name() != "sqlite":
        return None
    path = url.database
    return Path(path) if path and path != ":memory:" and not path.startswith("file:") else None


def with_sqlite_path(uri: str, path: Path) -> str:
    """``uri`` (a SQLite URI) pointing at ``path`` instead, its driver and options kept."""
    return make_url(uri).set(database=str(path)).render_as_string(hide_password=False)
