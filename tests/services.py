"""Real services for the scale-out tests: a throwaway PostgreSQL cluster and an MLflow server.

Both listen on 127.0.0.1 only and are removed afterwards. PostgreSQL comes from the system
packages (``apt-get install postgresql``; `.ci/run` installs it); without it the tests that
need it are skipped with that reason.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .helpers import PYTHON

PASSWORD = "s3cret-pw"
# The database role's: unencoded "/" and "?" in a URI's password, which PostgreSQL accepts and
# a URL parser takes for the start of the path (it was written in clear once).
DB_PASSWORD = "pa/ss?w0rd9"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def postgres_bin() -> Path | None:
    """The folder holding initdb and pg_ctl, or None when PostgreSQL is not installed."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


@dataclass(frozen=True)
class Postgres:
    port: int
    user: str
    password: str

    def url(self, database: str, password: bool = True) -> str:
        secret = f":{self.password}" if password else ""
        return f"postgresql://{self.user}{secret}@127.0.0.1:{self.port}/{database}"


@contextmanager
def postgres(databases: tuple[str, ...]) -> Iterator[Postgres]:
    """A new cluster with a password-protected role owning ``databases``."""
    binaries = postgres_bin()
    if binaries is None:
        raise RuntimeError("PostgreSQL server binaries not found (apt-get install postgresql)")
    folder = Path(tempfile.mkdtemp(prefix="tfi-pg-"))
    as_owner: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: run the cluster as the postgres account
        owner = pwd.getpwnam("postgres")
        os.chown(folder, owner.pw_uid, owner.pw_gid)
        as_owner = ["runuser", "-u", "postgres", "--"]
    data = folder / "data"
    port = free_port()
    password_file = folder / "superuser"
    run = _runner(as_owner)
    try:
        superuser_password = _pwfile(password_file, as_owner)
        run([str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "--auth-local=trust",
             "--auth-host=scram-sha-256", f"--pwfile={superuser_password}"])  # fmt: skip
        run([str(binaries / "pg_ctl"), "-D", str(data), "-w", "-l", str(folder / "log"),
             "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "start"])  # fmt: skip
        psql = [str(binaries / "psql"), "-h", str(folder), "-p", str(port), "-U", "postgres",
                "-v", "ON_ERROR_STOP=1", "-d", "postgres", "-c"]  # fmt: skip
        run([*psql, f"CREATE ROLE tfi LOGIN PASSWORD '{DB_PASSWORD}'"])
        for database in databases:
            run([*psql, f"CREATE DATABASE {database} OWNER tfi"])
        yield Postgres(port, "tfi", DB_PASSWORD)
    finally:
        subprocess.run(
            [*as_owner, str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(folder, ignore_errors=True)


def _pwfile(path: Path, as_owner: list[str]) -> Path:
    path.write_text(PASSWORD + "-superuser\n")
    if as_owner:
        owner = pwd.getpwnam("postgres")
        os.chown(path, owner.pw_uid, owner.pw_gid)
    return path


def _runner(prefix: list[str]):
    def run(command: list[str]) -> None:
        done = subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{command[0]} failed: {done.stderr or done.stdout}")

    return run


@contextmanager
def mlflow_server(backend_uri: str, artifacts: Path, env: dict[str, str]) -> Iterator[str]:
    """`mlflow server` on a free loopback port; yields its URL once /health answers."""
    port = free_port()
    log = artifacts.parent / "mlflow-server.log"
    with log.open("w") as output:
        server = subprocess.Popen(
            [PYTHON, "-m", "mlflow", "server", "--backend-store-uri", backend_uri,
             "--artifacts-destination", str(artifacts), "--host", "127.0.0.1",
             "--port", str(port), "--workers", "1"],
            env=env, stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
