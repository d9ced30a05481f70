"""pytest plugin: a real PostgreSQL server (Debian's `postgresql` package) on 127.0.0.1, for the
catalog contract tests and the two-mount tests.

Load it from tests/conftest.py (`pytest_plugins`). Nothing here skips: if PostgreSQL cannot be
found or started, the fixtures raise and every test that uses them errors (CI installs the package
through scripts/setup.sh).

Fixtures:
    pg_server  (session)  a PostgresServer: its own cluster in a temp dir owned by `postgres`,
                          listening on 127.0.0.1 on a free port (never the system cluster's 5432),
                          stopped (and the dir removed) at session end. .url(db), .restart(),
                          .create_database(), .drop_database(), .admin_sql()
    pg_url     (function) a fresh, empty database for this test; yields its URL
                          postgresql://lamfs:<password>@127.0.0.1:<port>/<db>; dropped afterwards

The cluster's default collation is ICU `en-US` (initdb --locale-provider=icu), as on a typical
production server, so the tests see PostgreSQL order text differently from SQLite ('_' < '%',
'000a' < '000A'); the catalog must not depend on that.

Imports: the standard library, pytest; psycopg2 (admin statements only).
"""
from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

#: The role the tests (and lamfs) connect as, and its password. The password is distinctive so the
#: tests can check it never shows up in a log or an error message.
PG_USER = "lamfs"
PG_PASSWORD = "pw-Zq8Lamfs-secret"


def find_pg_bin() -> Path:
    """LAMFS_PG_BIN, else the newest /usr/lib/postgresql/<version>/bin (Debian's layout)."""
    env = os.environ.get("LAMFS_PG_BIN")
    if env:
        return Path(env)
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if not candidates:
        raise RuntimeError("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): "
                           "run scripts/setup.sh, which installs Debian's `postgresql`")
    return candidates[-1].parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One throwaway PostgreSQL cluster. As root, initdb/pg_ctl run as the `postgres` user (the
    server refuses to run as root); as any other user they run as that user."""

    def __init__(self, *, fsync: bool = False, bin_dir: Path | None = None):
        self.bin = bin_dir or find_pg_bin()
        self.fsync = fsync
        self.base = Path(tempfile.mkdtemp(prefix="lamfs-pg-"))
        self.data = self.base / "data"
        self.log_path = self.base / "server.log"
        self.port = 0
        self.admin_password = secrets.token_hex(12)
        self._as_postgres = os.geteuid() == 0
        self._watchdog: subprocess.Popen | None = None
        if self._as_postgres:
            shutil.chown(self.base, "postgres", "postgres")
        self.base.chmod(0o700)

    # -- process control --------------------------------------------------------------------------

    def _cmd(self, *args: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *args] if self._as_postgres else list(args)

    def _run(self, *args: str, timeout: float = 60) -> str:
        proc = subprocess.run(self._cmd(*args), capture_output=True, text=True, timeout=timeout,
                              cwd=self.base, stdin=subprocess.DEVNULL)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n"
                               f"--- server log ---\n{self.log_tail()}")
        return proc.stdout

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return "(no server log)"

    def start(self) -> "PostgresServer":
        pwfile = self.base / "pwfile"
        pwfile.write_text(self.admin_password + "\n")
        if self._as_postgres:
            shutil.chown(pwfile, "postgres", "postgres")
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", f"--pwfile={pwfile}",
                  "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8",
                  "--locale-provider=icu", "--icu-locale=en-US", "--no-sync", timeout=120)
        pwfile.unlink()
        last_error: Exception | None = None
        for _ in range(3):  # the free port may be taken between probing and listening
            self.port = free_port()
            settings = {
                "listen_addresses": "'127.0.0.1'",
                "port": str(self.port),
                "unix_socket_directories": f"'{self.base}'",
                "max_connections": "200",
                "fsync": "on" if self.fsync else "off",
                "synchronous_commit": "on" if self.fsync else "off",
                "full_page_writes": "on" if self.fsync else "off",
                "log_min_messages": "warning",
                "log_line_prefix": "'%m [%p] %q%u@%d '",
            }
            (self.data / "postgresql.auto.conf").write_text(
                "".join(f"{k} = {v}\n" for k, v in settings.items()))
            try:
                self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log_path), "-w",
                          "-t", "60", "start")
                break
            except RuntimeError as exc:
                last_error = exc
        else:
            raise RuntimeError(f"PostgreSQL did not start: {last_error}")
        # if this process dies without terminate(), the watchdog's stdin closes and it stops the server
        self._watchdog = subprocess.Popen(
            self._cmd("sh", "-c", f"cat >/dev/null; '{self.bin}/pg_ctl' -D '{self.data}' -m immediate "
                      f"stop >/dev/null 2>&1; rm -rf '{self.base}'"),
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/",
            start_new_session=True)  # Ctrl-C on pytest must not kill the watchdog before it acts
        self.admin_sql(f"CREATE ROLE {PG_USER} LOGIN CREATEDB PASSWORD '{PG_PASSWORD}'")
        return self

    def restart(self) -> None:
        """pg_ctl restart -m fast: every open connection is terminated, the server comes back on the
        same port."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log_path), "-w", "-t", "60",
                  "-m", "fast", "restart")

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-m", "fast", "stop")

    def is_running(self) -> bool:
        proc = subprocess.run(self._cmd(str(self.bin / "pg_ctl"), "-D", str(self.data), "status"),
                              capture_output=True, text=True, cwd=self.base)
        return proc.returncode == 0

    def terminate(self) -> None:
        try:
            if self.data.exists() and self.is_running():
                self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-m", "immediate", "stop")
        finally:
            if self._watchdog is not None:
                self._watchdog.stdin.close()  # its pg_ctl stop finds nothing running
                try:
                    self._watchdog.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self._watchdog.kill()
            shutil.rmtree(self.base, ignore_errors=True)

    # -- databases ---------------------------------------------------------------------------------

    def url(self, database: str, *, user: str = PG_USER, password: str | None = PG_PASSWORD) -> str:
        auth = f"{user}:{password}@" if password is not None else f"{user}@"
        return f"postgresql://{auth}127.0.0.1:{self.port}/{database}"

    def admin_sql(self, *statements: str, database: str = "postgres") -> list[tuple]:
        """Run statements as the superuser (autocommit); returns the last one's rows, if any."""
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", password=self.admin_password,
                                dbname=database, connect_timeout=10)
        try:
            conn.autocommit = True
            rows: list[tuple] = []
            with conn.cursor() as cur:
                for statement in statements:
                    cur.execute(statement)
                    rows = cur.fetchall() if cur.description else []
            return rows
        finally:
            conn.close()

    def create_database(self, name: str | None = None) -> str:
        name = name or f"t_{secrets.token_hex(6)}"
        self.admin_sql(f'CREATE DATABASE "{name}" OWNER {PG_USER}')
        return name

    def drop_database(self, name: str) -> None:
        self.admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def connections(self, database: str) -> int:
        return self.admin_sql(f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{database}'")[0][0]


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.start()
    except BaseException:
        server.terminate()
        raise
    try:
        yield server
    finally:
        server.terminate()


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> Iterator[str]:
    if not pg_server.is_running():  # a test that stopped it and failed
        pg_server._run(str(pg_server.bin / "pg_ctl"), "-D", str(pg_server.data), "-l", str(pg_server.log_path),
                       "-w", "start")
    name = pg_server.create_database()
    try:
        yield pg_server.url(name)
    finally:
        pg_server.drop_database(name)
