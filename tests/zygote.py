"""A fork server for the tests' Shipyard servers: it imports Shipyard (torch, transformers: ~10 s
of CPU) once, then forks a fresh `shipyard serve` for each `ServerProcess` in milliseconds. The
forked server is the same program a `python -m shipyard serve` would run — its own process,
arguments, environment, working directory and log file — only its imports are inherited.

The test side talks to it over its stdin/stdout, one JSON line a request:
    {"op": "spawn", "argv": [...], "env": {...}, "cwd": "...", "log": "..."} -> {"pid": N}
    {"op": "poll", "pid": N} -> {"returncode": None | int}
`ForkedProcess` gives the handful of `subprocess.Popen` methods the tests use (poll, wait,
send_signal, terminate, kill, pid, returncode). Set SHIPYARD_TEST_FORK=0 to start each server with
a plain `python -m shipyard` instead.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
import threading
import time

ENABLED = os.environ.get("SHIPYARD_TEST_FORK", "1") != "0"


# ---------------------------------------------------------------- the fork server (its own process)
def _child(request: dict) -> None:
    """In the forked child: become the requested `shipyard` command, then exit with its status."""
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    sys.stdin = open(0, closefd=False)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    # As a fresh interpreter starts: SIGPIPE ignored (a write to a socket the client closed is an
    # EPIPE error, not the process's death), SIGINT as KeyboardInterrupt, the rest by default.
    for sig in (signal.SIGTERM, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    import random

    random.seed()  # not the fork server's sequence
    try:
        import numpy

        numpy.random.seed()
    except ImportError:
        pass
    sys.argv = ["shipyard", *request["argv"]]
    code = 0
    try:
        from shipyard.cli.main import app

        app(args=request["argv"], prog_name="shipyard")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # never the fork server's exit handlers


def serve() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import shipyard.server.app  # noqa: F401 (the point: imported once, inherited by every fork)
    import shipyard.cli.main  # noqa: F401

    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints from here on go to stderr, not into the replies
    statuses: dict[int, int] = {}
    replies.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "spawn":
            pid = os.fork()
            if pid == 0:
                replies.close()
                _child(request)
            replies.write(json.dumps({"pid": pid}) + "\n")
        elif request["op"] == "poll":
            pid = request["pid"]
            if pid not in statuses:
                try:
                    done, status = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    done, status = pid, 0
                if done:
                    statuses[pid] = os.waitstatus_to_exitcode(status)
            replies.write(json.dumps({"returncode": statuses.get(pid)}) + "\n")


# ---------------------------------------------------------------- the test side
class _Server:
    """The one fork server of this test process, started on first use."""

    _instance: _Server | None = None
    _guard = threading.Lock()

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        self.lock = threading.Lock()
        if json.loads(self.proc.stdout.readline() or "{}").get("ready") is not True:
            raise RuntimeError("the test fork server did not start")
        atexit.register(self.close)

    @classmethod
    def get(cls) -> _Server:
        with cls._guard:
            if cls._instance is None or cls._instance.proc.poll() is not None:
                cls._instance = _Server()
            return cls._instance

    def ask(self, request: dict) -> dict:
        with self.lock:
            self.proc.stdin.write(json.dumps(request) + "\n")
            return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(10)


class ForkedProcess:
    """What the tests use of `subprocess.Popen`, for a process the fork server started."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path, cwd: str | None = None):
        self._server = _Server.get()
        self.pid = self._server.ask({"op": "spawn", "argv": argv, "env": env, "cwd": cwd or os.getcwd(),
                                     "log": str(log_path)})["pid"]
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._server.ask({"op": "poll", "pid": self.pid})["returncode"]
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(["shipyard"], timeout)
            time.sleep(0.05)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


if __name__ == "__main__":
    serve()
