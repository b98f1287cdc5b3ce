"""Shared fixtures: a tiny real model, and real servers started as `shipyard serve` processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

import zygote

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MODEL_NAME = "tiny"


def until(predicate, timeout: float, what: str, every: float = 0.25) -> None:
    """Poll `predicate` until it holds; fail with `what` past `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(every)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`python -m shipyard serve` on a free loopback port, logs captured to a file."""

    def __init__(self, config: dict, workdir: Path, extra_args: list[str] | None = None,
                 env: dict[str, str] | None = None):
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / f"shipyard-{self.port}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / f"server-{self.port}.log"
        self._log = open(self.log_path, "w")
        data_dir = workdir / f"data-{self.port}"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "SHIPYARD_DATA_DIR": str(data_dir),
               **(env or {})}
        argv = ["serve", "--config", str(self.config_path), "--port", str(self.port), *(extra_args or [])]
        if zygote.ENABLED:  # forked from a process that imported Shipyard once (tests/zygote.py)
            self.proc = zygote.ForkedProcess(argv, env, self.log_path)
        else:
            self.proc = subprocess.Popen([sys.executable, "-m", "shipyard", *argv], stdout=self._log,
                                         stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float = 120.0) -> None:
        self.wait_for("/ready", 200, timeout)

    def wait_for(self, path: str, status: int, timeout: float = 120.0) -> None:
        """Poll `path` until it answers `status` (the server must stay up meanwhile)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.base_url}{path}", timeout=1).status_code == status:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{path} never answered {status} within {timeout}s:\n{self.log()}")

    def wait_for_log(self, text: str, timeout: float = 10.0) -> None:
        """The access line is written after the last response byte: a client can be faster."""
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{text!r} never appeared in the log:\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def __enter__(self) -> ServerProcess:
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self._log.closed:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from shipyard.demo.build import TINY, build_model

    return build_model(tmp_path_factory.mktemp("models") / "tiny", TINY, corpus_chars=200_000)


@pytest.fixture(scope="session")
def long_context_model(tmp_path_factory) -> Path:
    """The tiny model with a 2,048-token context: a tool list is a long prompt for its small vocabulary."""
    import dataclasses

    from shipyard.demo.build import TINY, build_model

    return build_model(tmp_path_factory.mktemp("models") / "tiny", dataclasses.replace(TINY, max_position_embeddings=2048),
                       corpus_chars=200_000)


def deployment(model: Path, **settings) -> dict:
    return {"engine": "transformers", "model": str(model), "max_num_seqs": 32, "num_threads": 1, **settings}


@pytest.fixture(scope="session")
def server(tiny_model, tmp_path_factory):
    config = {"auth": "disabled", "deployments": {MODEL_NAME: deployment(tiny_model)}}
    with ServerProcess(config, tmp_path_factory.mktemp("server")) as proc:
        yield proc


@pytest.fixture(scope="session")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture()
def client(server):
    import openai

    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=60) as c:
        yield c


@pytest.fixture()
async def async_client(server):
    import openai

    async with openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0,
                                  timeout=60) as c:
        yield c


@pytest.fixture(scope="session")
def redis_server():
    from services import RedisServer

    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server():
    from services import PostgresServer

    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def auth_server(tiny_model, tmp_path_factory):
    """A server with authentication on and SHIPYARD_ADMIN_KEY set."""
    from gateway_support import ADMIN_KEY, gateway_config

    with ServerProcess(gateway_config(tiny_model, usage_flush_interval_s=0.1), tmp_path_factory.mktemp("auth"),
                       env={"SHIPYARD_ADMIN_KEY": ADMIN_KEY}) as proc:
        yield proc


@pytest.fixture(scope="module")
def admin(auth_server):
    from gateway_support import AdminClient

    return AdminClient(auth_server.base_url)
