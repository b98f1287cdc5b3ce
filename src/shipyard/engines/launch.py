"""Engine processes the gateway starts and keeps alive: a Shipyard worker, `vllm serve`,
`text-generation-launcher`, SGLang, `trtllm-serve`, or llama.cpp's server (llama-cpp-python's
`python -m llama_cpp.server`, or the C++ `llama-server`).

A launched replica is an `openai_http` engine whose server is a child process: started with the
right flags (prefix caching on where the engine has it, the model served under the deployment's
name), restarted with exponential backoff when it dies (the replica is simply not ready
meanwhile, so routing skips it and takes it back once its health check passes), and stopped
cleanly (SIGTERM, then SIGKILL after a grace period).

Prefix caching: vLLM takes `--enable-prefix-caching`; SGLang (RadixAttention), TGI and
llama-server (`cache_prompt`) have it on by default; llama-cpp-python reuses the longest common
prefix with the previous prompt by itself (its `--cache` snapshot cache copies the whole KV state
after every request, which costs more than it saves on the small models it serves, so it is left
to `args`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import sys
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shipyard.engines.base import path_identity
from shipyard.engines.upstream import OpenAIHTTPEngine, OpenAIHTTPEngineConfig

log = logging.getLogger("shipyard.launch")

Kind = Literal["worker", "vllm", "tgi", "sglang", "trtllm", "llamacpp", "llama-server"]
# Where each server reads the key it demands (from the environment: a flag would show in `ps`)
TOKEN_ENV = {"worker": "SHIPYARD_WORKER_TOKEN", "vllm": "VLLM_API_KEY", "llamacpp": "API_KEY", "llama-server": "LLAMA_API_KEY"}
FLAVOR_OF: dict[str, str] = {"worker": "shipyard", "vllm": "vllm", "tgi": "tgi", "sglang": "sglang",
                             "trtllm": "trtllm", "llamacpp": "llamacpp_python", "llama-server": "llamacpp"}


class LaunchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    engine: Literal["launch"] = "launch"
    kind: Kind = "worker"
    model: str = Field(description="What the server loads: a local folder, a GGUF file, a hub id it can reach")
    host: str = "127.0.0.1"
    port: int | None = Field(None, ge=1, le=65535, description="default: a free port")
    num_threads: int = Field(1, ge=1, description="worker: torch threads; llama.cpp: its threads")
    executable: str | None = Field(None, description="the program to run instead of the usual one (for "
                                   "Python servers, the interpreter: e.g. another virtualenv's python)")
    args: list[str] = Field(default_factory=list, description="extra command-line flags")
    env: dict[str, str] = Field(default_factory=dict)
    restart_backoff_s: float = Field(1.0, gt=0, description="first restart delay; doubles up to 30 s")
    stop_grace_s: float = Field(10.0, ge=0)
    first_token_timeout_s: float = Field(60.0, gt=0)
    idle_timeout_s: float = Field(30.0, gt=0)
    poll_interval_s: float = Field(1.0, gt=0)


def command_for(config: LaunchConfig, name: str, port: int) -> list[str]:
    """The server's command line, from each server's own documented flags."""
    host, model = config.host, config.model
    python = config.executable or sys.executable
    base = {
        "worker": [python, "-m", "shipyard", "worker", "--model", model, "--served-model-name", name,
                   "--host", host, "--port", str(port), "--num-threads", str(config.num_threads)],
        "vllm": ["vllm", "serve", model, "--served-model-name", name, "--host", host, "--port", str(port),
                 "--enable-prefix-caching"],
        "tgi": ["text-generation-launcher", "--model-id", model, "--hostname", host, "--port", str(port)],
        "sglang": [python, "-m", "sglang.launch_server", "--model-path", model, "--served-model-name", name,
                   "--host", host, "--port", str(port)],  # RadixAttention prefix caching is on by default
        "trtllm": ["trtllm-serve", model, "--host", host, "--port", str(port)],
        # llama-cpp-python serves one request at a time and, by default, cuts the one in flight
        # short when another arrives (`interrupt_requests`): queue them instead
        "llamacpp": [python, "-m", "llama_cpp.server", "--model", model, "--model_alias", name,
                     "--host", host, "--port", str(port), "--n_threads", str(config.num_threads),
                     "--interrupt_requests", "false"],
        "llama-server": ["llama-server", "--model", model, "--alias", name, "--host", host, "--port", str(port),
                         "--threads", str(config.num_threads), "--metrics"],
    }[config.kind]
    if config.executable and base[0] != python:  # a binary server: run the one named instead
        base = [config.executable, *base[1:]]
    return [*base, *config.args]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Launcher:
    """One child process, supervised."""

    def __init__(self, config: LaunchConfig, name: str, served_name: str):
        self.config = config
        self.name = name  # the replica's, for the log
        self.served_name = served_name  # the model name the server answers to
        self.port = config.port or _free_port()
        self.url = f"http://{config.host}:{self.port}"
        self.token = secrets.token_urlsafe(24)  # the worker's internal token, never logged
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self._supervisor: asyncio.Task | None = None
        self._stopping = False

    async def start(self) -> None:
        await self._spawn()
        self._supervisor = asyncio.create_task(self._supervise())

    async def _spawn(self) -> None:
        command = command_for(self.config, self.served_name, self.port)
        env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), **self.config.env}
        if self.config.kind in TOKEN_ENV:
            env[TOKEN_ENV[self.config.kind]] = self.token
        self.process = await asyncio.create_subprocess_exec(*command, env=env, stdin=asyncio.subprocess.DEVNULL,
                                                            start_new_session=True)
        log.info("launched %s replica %s: pid=%d port=%d", self.config.kind, self.name, self.process.pid, self.port)

    async def _supervise(self) -> None:
        backoff = self.config.restart_backoff_s
        while not self._stopping:
            started = time.monotonic()
            code = await self.process.wait()
            if self._stopping:
                return
            if time.monotonic() - started > 60:  # it had been running fine: start the backoff over
                backoff = self.config.restart_backoff_s
            log.warning("%s replica %s (pid %d) exited with %s; restarting in %.1f s", self.config.kind, self.name,
                        self.process.pid, code, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)
            if self._stopping:
                return
            self.restarts += 1
            await self._spawn()

    async def stop(self) -> None:
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        process = self.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), self.config.stop_grace_s)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


class LaunchedEngine(OpenAIHTTPEngine):
    """An `openai_http` engine over a server this gateway runs as a child process."""

    def __init__(self, config: LaunchConfig, model_id: str, replica_name: str):
        self.launcher = Launcher(config, replica_name, model_id)
        self._identity: str | None = None
        super().__init__(OpenAIHTTPEngineConfig(
            url=self.launcher.url, flavor=FLAVOR_OF[config.kind], upstream_model=model_id,
            first_token_timeout_s=config.first_token_timeout_s, idle_timeout_s=config.idle_timeout_s,
            poll_interval_s=config.poll_interval_s), model_id, api_key=self.launcher.token)

    def identity(self) -> str:  # the port is new at every launch; the model is what matters
        if self._identity is None:  # read from disk once, not on every cached request
            config = self.launcher.config
            self._identity = f"launch:{config.kind}:{config.model}:{path_identity(config.model)}:{config.args}"
        return self._identity

    async def start(self) -> None:
        await self.launcher.start()
        await super().start()  # not ready until the child answers its health check

    async def stop(self) -> None:
        await super().stop()
        await self.launcher.stop()
