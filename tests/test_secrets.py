"""Passwords in storage and tracking URIs: masked in every form a URL can carry one, and config
paths that stay inside the output location whatever SQLite driver names them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tfi.cli import main
from tfi.runtime.uris import has_password, mask_text, mask_uri, sqlite_path

from .helpers import SMOKE

SECRET = "pa/ss-w0rd9"

MASKED = {
    # userinfo with characters a URL parser takes for the path, the query or the host's end
    f"postgresql://tfi:{SECRET}@db:5432/optuna": "postgresql://tfi:***@db:5432/optuna",
    "postgresql://tfi:pa?ss#w@db/optuna": "postgresql://tfi:***@db/optuna",
    "postgresql://tfi:p@ss@db/optuna": "postgresql://tfi:***@db/optuna",
    "postgresql+psycopg://:pa/ss-w0rd9@db/optuna": "postgresql+psycopg://:***@db/optuna",
    "http://analyst:s3cret@127.0.0.1:9": "http://analyst:***@127.0.0.1:9",
    # query parameters and libpq keyword strings
    f"postgresql://tfi@db/optuna?password={SECRET}": "postgresql://tfi@db/optuna?password=***",
    "postgresql://tfi@db/optuna?sslmode=require&PASSWORD=x1&a=b": (
        "postgresql://tfi@db/optuna?sslmode=require&PASSWORD=***&a=b"
    ),
    "mysql://tfi@db/optuna?passwd=x1": "mysql://tfi@db/optuna?passwd=***",
    "host=db user=tfi password=x1 dbname=optuna": "host=db user=tfi password=*** dbname=optuna",
    "postgresql://tfi@db/optuna?sslpassword=x1": "postgresql://tfi@db/optuna?sslpassword=***",
}
UNTOUCHED = [
    "sqlite:///optuna.db",
    "postgresql://tfi@db:5432/optuna",
    "models:/tfi-classifier@champion",
    "http://127.0.0.1:5000/#/experiments/1",
    "cannot open postgresql://tfi@db/optuna: password authentication failed",
]


@pytest.mark.parametrize("uri", list(MASKED))
def test_every_password_form_is_masked(uri):
    assert mask_uri(uri) == MASKED[uri]
    assert has_password(uri)
    # inside free text (an error message, a log line), several times over
    line = f"cannot open the Optuna storage {uri} - connection to {uri} refused"
    assert mask_text(line) == line.replace(uri, MASKED[uri])


@pytest.mark.parametrize("text", UNTOUCHED)
def test_text_without_a_password_is_left_alone(text):
    assert mask_text(text) == text
    assert not has_password(text)


@pytest.mark.parametrize(
    "uri",
    [
        "sqlite:///../elsewhere/optuna.db",
        "sqlite+pysqlite:///../elsewhere/optuna.db",
        "sqlite+pysqlite:////elsewhere/optuna.db",
        "sqlite+aiosqlite:////elsewhere/optuna.db",
        "sqlite+pysqlcipher://:key@/../elsewhere/optuna.db",
    ],
)
def test_every_sqlite_driver_form_is_kept_inside_the_output_location(uri, tmp_path, capsys):
    assert sqlite_path(uri) is not None
    raw = yaml.safe_load(SMOKE.read_text())
    raw["execution"]["storage"] = uri
    raw["output_dir"] = str(tmp_path / "out")
    path = tmp_path / "escape.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["tune", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "outside the output location" in err and "Traceback" not in err
    assert not Path("/elsewhere").exists() and not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize(
    "storage",
    [f"postgresql://tuner:{SECRET}@127.0.0.1:9/optuna", "postgresql://tuner@127.0.0.1:9/optuna"
     f"?password={SECRET}"],
)  # fmt: skip
def test_an_unreachable_storage_never_shows_its_password(storage, store, capsys):
    assert main(["tune", "--config", str(SMOKE), "--storage", storage]) == 2
    err = capsys.readouterr().err
    assert "cannot open the Optuna storage" in err
    assert SECRET not in err and "pa/" not in err
