"""The test session's own ``redis-server``: started on a free loopback port at the first use, stopped at the end.

The suite never uses a shared Redis (the machine's 127.0.0.1:6379): it starts
``redis-server --port <free> --bind 127.0.0.1 --dir <tmp> --appendonly yes --appendfsync always
--save ""`` the first time a test asks for a Redis URL, and stops it (and deletes its
directory) when the session ends. ``DUROXIDE_REDIS_URL`` points the suite at another
server instead. Without ``redis-server`` the tests that need it FAIL, naming the package.

Example::

    url = REDIS.url()          # starts the server on first use
    store = await RedisProvider.new(url, prefix=f"t{uuid.uuid4().hex[:12]}")
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

#: Another server to use instead of the session's own (its keys are only ever written under test prefixes).
EXTERNAL_URL = os.environ.get("DUROXIDE_REDIS_URL")


def free_port() -> int:
    """A TCP port free on the loopback interface now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process with its data in a temp dir; :meth:`url` starts it, :meth:`stop` ends it.

    Example::

        server = RedisServer()
        try:
            print(server.url())
        finally:
            server.stop()
    """

    def __init__(self, fsync: str = "always", extra: tuple[str, ...] = ()) -> None:
        self.fsync = fsync
        #: More command-line options (e.g. ``("--rename-command", "WATCH", "")``).
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir: Path | None = None
        self.port = 0

    def url(self) -> str:
        """The server's URL (db 0), starting the server first if needed."""
        if self.proc is None:
            self.start()
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server (on a fresh free port unless restarting) and wait until it answers PING."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: the Redis tests need it "
                               "(apt-get install -y redis-server), or set DUROXIDE_REDIS_URL")
        if self.dir is None:
            self.dir = Path(tempfile.mkdtemp(prefix="duroxide-redis-"))
        if not self.port:
            self.port = free_port()
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--appendonly", "yes", "--appendfsync", self.fsync, "--save", "", "--daemonize", "no",
             "--protected-mode", "yes", "--logfile", str(self.dir / "redis.log"), *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer on port {self.port} within 30 s")

    def kill(self) -> None:
        """SIGKILL the server (its data dir stays: :meth:`start` restarts it from its AOF)."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)
            self.proc = None

    def stop(self) -> None:
        """Stop the server and delete its data."""
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


class _Session:
    """The session's server, started lazily (only runs that use Redis pay for it)."""

    def __init__(self) -> None:
        self.server: RedisServer | None = None

    def url(self) -> str:
        if EXTERNAL_URL:
            return EXTERNAL_URL
        if self.server is None:
            self.server = RedisServer()
            atexit.register(self.stop)
        return self.server.url()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


#: The session's Redis (tests/conftest.py stops it at the session's end).
REDIS = _Session()
