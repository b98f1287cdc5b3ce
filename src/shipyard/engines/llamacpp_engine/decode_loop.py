"""The decode loop in C (decode_loop.c): built once, loaded with ctypes, driven from the engine.

Python's share of a decode step (sampling a row with torch, filling the batch, the bookkeeping
around it) costs about as much as llama.cpp's forward of a small model, and holds the GIL the
HTTP side needs. While every running sequence samples simply, the engine hands the steps to this
loop: it decodes and samples on its own thread, with one llama.cpp sampler chain per sequence
(logit bias, temperature, top-k, top-p, then a draw: the embedded sampler's order), and Python
reads the ids as they come. What llama.cpp's chain cannot do the same way (penalties, grammars,
logprobs, seeds, whose draws must not depend on how steps were run) stays in Python's steps.

The library is compiled at first use with the system's C compiler, against the headers of the
llama.cpp that llama-cpp-python vendors (its source release, kept by scripts/llama-cpp.sh) and
its libllama.so, and cached under ~/.cache/shipyard by version and source hash. Without a
compiler or those sources the engine runs every step in Python, as before.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
from pathlib import Path

import numpy as np

from shipyard.engines.base import SamplingParams
from shipyard.engines.build_cache import cache_root, llama_cpp_sdist

log = logging.getLogger("shipyard.engines.llamacpp")
SOURCE = Path(__file__).with_name("decode_loop.c")
FLAGS = ["-O3", "-ffast-math", "-shared", "-fPIC", "-pthread"]  # fast-math: the scoring loop vectorizes
CAPACITY = 4096  # steps one run may take (a longer one is several runs)
_GREEDY_BELOW = 1e-5  # as the embedded sampler: a temperature this low is greedy decoding
_build_lock = threading.Lock()
_library: ctypes.CDLL | None | bool = None  # False: tried, unavailable


class DecodeLoopUnavailable(RuntimeError):
    pass


def library() -> ctypes.CDLL | None:
    """The compiled loop, built on first use; None (logged once) where it cannot be built."""
    global _library
    with _build_lock:
        if _library is None:
            try:
                _library = _load(_build())
            except (DecodeLoopUnavailable, OSError) as exc:
                log.warning("llamacpp: decode steps stay in Python (the C decode loop is unavailable: %s)", exc)
                _library = False
    return _library or None


def _build() -> Path:
    import llama_cpp

    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode()).hexdigest()[:12]
    out = cache_root() / "native" / f"decode-loop-{llama_cpp.__version__}-{digest}.so"
    if out.is_file():
        return out
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    sdist = llama_cpp_sdist(llama_cpp.__version__)
    if not compiler:
        raise DecodeLoopUnavailable("no C compiler (cc) on PATH")
    if not sdist.is_file() or not (lib_dir / "libllama.so").is_file():
        raise DecodeLoopUnavailable(f"llama.cpp's headers ({sdist}) or libllama.so are missing; "
                                    "scripts/llama-cpp.sh installs both")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        vendor = f"llama_cpp_python-{llama_cpp.__version__}/vendor/llama.cpp"
        with tarfile.open(sdist) as archive:  # llama.h and the ggml headers it includes
            members = [m for m in archive.getmembers() if m.isfile() and m.name.endswith(".h")
                       and m.name.startswith((f"{vendor}/include/", f"{vendor}/ggml/include/"))]
            archive.extractall(tmp, members=members, filter="data")
        built = Path(tmp) / out.name
        command = [compiler, *FLAGS, str(SOURCE),
                   f"-I{tmp}/{vendor}/include", f"-I{tmp}/{vendor}/ggml/include",
                   f"-L{lib_dir}", "-lllama", "-lm", f"-Wl,-rpath,{lib_dir}", "-o", str(built)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise DecodeLoopUnavailable(f"compiling {SOURCE.name} failed: {done.stderr.strip()[-2000:]}")
        os.replace(built, out)  # atomic: a concurrent build leaves one whole file
    log.info("llamacpp: built the C decode loop (%s)", out)
    return out


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))  # a CDLL call releases the GIL for its whole duration
    p, i32 = ctypes.c_void_p, ctypes.c_int32
    lib.sy_loop_new.argtypes, lib.sy_loop_new.restype = [p, ctypes.c_int, ctypes.c_int, ctypes.c_int], p
    lib.sy_loop_row.argtypes = [p, ctypes.c_int, i32, i32, i32, p, ctypes.c_float, ctypes.c_int, p, p, ctypes.c_uint64]
    lib.sy_loop_row.restype = None
    lib.sy_loop_tokens.argtypes, lib.sy_loop_tokens.restype = [p], ctypes.POINTER(i32)
    lib.sy_loop_logprobs.argtypes, lib.sy_loop_logprobs.restype = [p], ctypes.POINTER(ctypes.c_float)
    lib.sy_loop_entropies.argtypes, lib.sy_loop_entropies.restype = [p], ctypes.POINTER(ctypes.c_float)
    lib.sy_loop_start.argtypes = [p, ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.sy_loop_start.restype = ctypes.c_int
    lib.sy_loop_wait.argtypes = [p, ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
    lib.sy_loop_wait.restype = ctypes.c_int
    lib.sy_loop_stop.argtypes, lib.sy_loop_stop.restype = [p], None
    lib.sy_loop_join.argtypes, lib.sy_loop_join.restype = [p], ctypes.c_int
    lib.sy_loop_free.argtypes, lib.sy_loop_free.restype = [p], None
    return lib


class RowSampler:
    """How one sequence samples in the loop, in the embedded sampler's order: logit bias, then
    temperature, then a draw (or the highest, greedy). Top-k and top-p rows get a llama.cpp
    sampler chain built in that order (bias, temperature, top-k, top-p, draw); the others are
    drawn by the loop itself. Ids at or past the tokenizer's vocabulary (a GGUF's padding) are
    never drawn."""

    def __init__(self, params: SamplingParams, n_vocab: int, vocab_size: int):
        import llama_cpp as lib

        self._lib = lib
        self.temperature = params.temperature if params.temperature >= _GREEDY_BELOW else 0.0
        bias = {t: b for t, b in params.logit_bias.items() if 0 <= t < vocab_size}
        self.bias_ids = np.fromiter(bias.keys(), dtype=np.int32, count=len(bias))
        self.bias = np.fromiter(bias.values(), dtype=np.float32, count=len(bias))
        self.chain = None
        top_k = 0 < params.top_k < vocab_size
        if self.temperature and (top_k or params.top_p < 1.0):
            self.chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
            bias.update({t: float("-inf") for t in range(vocab_size, n_vocab)})
            if bias:
                entries = (lib.llama_logit_bias * len(bias))(*(lib.llama_logit_bias(t, b) for t, b in bias.items()))
                self._add(lib.llama_sampler_init_logit_bias(n_vocab, len(bias), entries))
            self._add(lib.llama_sampler_init_temp(self.temperature))
            if top_k:
                self._add(lib.llama_sampler_init_top_k(params.top_k))
            if params.top_p < 1.0:
                self._add(lib.llama_sampler_init_top_p(params.top_p, 1))
            self._add(lib.llama_sampler_init_dist(int.from_bytes(os.urandom(4), "little")))

    def _add(self, sampler) -> None:
        self._lib.llama_sampler_chain_add(self.chain, sampler)  # the chain owns it from here

    def close(self) -> None:
        if self.chain:
            self._lib.llama_sampler_free(self.chain)
            self.chain = None

    def __del__(self):
        self.close()


class DecodeLoop:
    """One llama.cpp context's C loop. `start` it over rows, `wait` for their ids, `stop` it,
    `join` it; only one run at a time, and nothing else may decode on the context meanwhile."""

    def __init__(self, lib: ctypes.CDLL, ctx, max_rows: int, vocab_size: int):
        self._lib = lib
        self._handle = lib.sy_loop_new(ctx, max_rows, CAPACITY, vocab_size)
        if not self._handle:
            raise MemoryError("the decode loop's buffers")
        self.max_rows = max_rows
        size = (CAPACITY * max_rows,)
        self._tokens = np.ctypeslib.as_array(lib.sy_loop_tokens(self._handle), shape=size)
        self._logprobs = np.ctypeslib.as_array(lib.sy_loop_logprobs(self._handle), shape=size)
        self._entropies = np.ctypeslib.as_array(lib.sy_loop_entropies(self._handle), shape=size)
        self._done = ctypes.c_int(0)
        self.n_rows = 0

    def start(self, rows: list[tuple[int, int, int, RowSampler]], max_steps: int, scoring: bool) -> None:
        """rows: (sequence id, position of the token to decode, that token, its sampler); with
        `scoring`, each token's logprob and its distribution's entropy come with it."""
        self._samplers = [sampler for *_, sampler in rows]  # their arrays stay alive while the loop reads them
        seeds = np.frombuffer(os.urandom(8 * len(rows)), dtype=np.uint64).tolist()
        for r, ((seq, position, token, sampler), seed) in enumerate(zip(rows, seeds)):
            self._lib.sy_loop_row(self._handle, r, seq, position, token, sampler.chain, sampler.temperature,
                                  len(sampler.bias), sampler.bias_ids.ctypes.data, sampler.bias.ctypes.data, seed)
        error = self._lib.sy_loop_start(self._handle, len(rows), max_steps, int(scoring))
        if error:
            raise OSError(error, f"the decode loop did not start ({os.strerror(error)})")
        self.n_rows = len(rows)

    def wait(self, seen: int, timeout_s: float) -> tuple[int, bool]:
        """(steps produced, whether the run has ended), once more than `seen` are."""
        produced = self._lib.sy_loop_wait(self._handle, seen, int(timeout_s * 1e6), ctypes.byref(self._done))
        return produced, bool(self._done.value)

    def tokens(self, step: int) -> list[int]:
        """The ids step `step` sampled, a row each."""
        n = self.n_rows
        return self._tokens[step * n: (step + 1) * n].tolist()

    def all_tokens(self, steps: int) -> np.ndarray:
        """[steps, rows]: every id of the run's first `steps` steps."""
        return self._tokens[: steps * self.n_rows].reshape(steps, self.n_rows)

    def scores(self, step: int) -> list[tuple[float, float]]:
        """(logprob, entropy) of each row's token of step `step` (when the run scores)."""
        n = self.n_rows
        window = slice(step * n, (step + 1) * n)
        return list(zip(self._logprobs[window].tolist(), self._entropies[window].tolist()))

    def stop(self) -> None:
        self._lib.sy_loop_stop(self._handle)

    def join(self) -> int:
        """llama_decode's status over the run (0: every step decoded)."""
        return self._lib.sy_loop_join(self._handle)

    def close(self) -> None:
        if self._handle:
            self._lib.sy_loop_free(self._handle)
            self._handle = None
