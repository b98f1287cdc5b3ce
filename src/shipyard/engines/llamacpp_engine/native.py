"""llama.cpp through llama-cpp-python's low-level (ctypes) API: one model, one context, a batch.

The high-level `llama_cpp.Llama` runs one sequence at a time; the C API decodes many sequences
in one `llama_decode` call, each token tagged with its sequence id, over one KV cache. That is
all this module wraps: loading, a reusable batch, decoding it, reading the logits of the rows
that asked for them, and the KV-cache operations a scheduler needs (drop a sequence, copy one).
Everything about requests (sampling, stops, detokenizing) stays in the embedded engine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shipyard.engines.settings import LLAMA_MAX_SEQUENCES as MAX_SEQUENCES


# llama_flash_attn_type: auto (llama.cpp decides), enabled, disabled. Which is faster depends on the
# model and the batch (measured by `shipyard deploy`): on the demo model at 8 sequences, off.
FLASH_ATTN = {"auto": -1, "on": 1, "off": 0}


class LlamaCppError(RuntimeError):
    pass


class NativeLlama:
    def __init__(self, path: str | Path, *, n_seq: int, seq_len: int | None, n_batch: int, n_threads: int,
                 n_gpu_layers: int = 0, verbose: bool = False, flash_attn: str = "auto"):
        try:
            import llama_cpp
            from llama_cpp import _logger
        except ImportError as exc:
            raise LlamaCppError("the llamacpp engine needs llama-cpp-python: run `scripts/llama-cpp.sh .venv/bin` "
                                "(make test does), which builds its wheel once") from exc

        if not 1 <= n_seq <= MAX_SEQUENCES:
            raise ValueError(f"llama.cpp decodes at most {MAX_SEQUENCES} sequences together (asked {n_seq})")
        self._model = self._ctx = self._batch = None
        _logger.set_verbose(verbose)  # llama.cpp's load chatter goes to stderr only when asked
        self._lib = llama_cpp
        llama_cpp.llama_backend_init()
        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = n_gpu_layers
        self._model = llama_cpp.llama_model_load_from_file(str(path).encode(), model_params)
        if not self._model:
            raise LlamaCppError(f"llama.cpp could not load {path} (not a GGUF file it knows?)")
        try:
            context_train = int(llama_cpp.llama_model_n_ctx_train(self._model))
            self.seq_len = min(context_train, seq_len) if seq_len else context_train
            self.vocab = llama_cpp.llama_model_get_vocab(self._model)
            self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self.vocab))
            params = llama_cpp.llama_context_default_params()
            # One unified KV store shared by every sequence: copying a prompt's cache to the other
            # choices of a request (or compacting slots) only relabels cells, never moves them.
            params.n_ctx = n_seq * self.seq_len
            params.n_seq_max = n_seq
            params.kv_unified = True
            params.n_batch = n_batch
            params.n_ubatch = min(n_batch, 512)
            params.n_threads = params.n_threads_batch = n_threads
            params.flash_attn_type = FLASH_ATTN[flash_attn]
            self._ctx = llama_cpp.llama_init_from_model(self._model, params)
            if not self._ctx:
                raise LlamaCppError(f"llama.cpp could not make a context of {params.n_ctx} tokens (out of memory?)")
            self._memory = llama_cpp.llama_get_memory(self._ctx)
            self.n_batch = n_batch
            self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
            batch = self._batch
            # numpy views over the batch's C arrays: filling them is one slice assignment per field
            self._tokens = np.ctypeslib.as_array(batch.token, shape=(n_batch,))
            self._positions = np.ctypeslib.as_array(batch.pos, shape=(n_batch,))
            self._n_seq_id = np.ctypeslib.as_array(batch.n_seq_id, shape=(n_batch,))
            self._wants_logits = np.ctypeslib.as_array(batch.logits, shape=(n_batch,))
            self._seq_ids = [batch.seq_id[i] for i in range(n_batch)]
            self._n_seq_id[:] = 1
        except BaseException:
            self.close()
            raise

    @property
    def context(self):
        """The llama_context pointer (for the C decode loop, which decodes on it between steps)."""
        return self._ctx

    def eog_tokens(self) -> set[int]:
        """The ids the GGUF marks as ending a generation (eos, eot, ...)."""
        lib = self._lib
        return {t for t in (lib.llama_vocab_eos(self.vocab), lib.llama_vocab_eot(self.vocab)) if t >= 0}

    def decode(self, tokens: np.ndarray, positions: np.ndarray, seqs: np.ndarray, wants: np.ndarray) -> np.ndarray:
        """Run the flat batch (chunked by n_batch) and return the logits of the rows in `wants`,
        in order, as float32 [rows, n_vocab]."""
        out: list[np.ndarray] = []
        for start in range(0, len(tokens), self.n_batch):
            end = min(start + self.n_batch, len(tokens))
            n = end - start
            self._tokens[:n] = tokens[start:end]
            self._positions[:n] = positions[start:end]
            self._wants_logits[:n] = wants[start:end]
            seq_ids = self._seq_ids
            for i, seq in enumerate(seqs[start:end].tolist()):
                seq_ids[i][0] = seq
            self._batch.n_tokens = n
            status = self._lib.llama_decode(self._ctx, self._batch)
            if status != 0:
                raise LlamaCppError(f"llama_decode failed with status {status}"
                                    + (" (no room left in the KV cache)" if status == 1 else ""))
            rows = int(wants[start:end].sum())
            if rows:
                pointer = self._lib.llama_get_logits(self._ctx)
                out.append(np.ctypeslib.as_array(pointer, shape=(rows, self.n_vocab)).copy())
        if not out:
            return np.zeros((0, self.n_vocab), dtype=np.float32)
        return out[0] if len(out) == 1 else np.concatenate(out)

    def drop(self, seq: int) -> None:
        """Forget every cached token of sequence `seq`."""
        self._lib.llama_memory_seq_rm(self._memory, seq, -1, -1)

    def truncate(self, seq: int, length: int) -> None:
        """Keep positions [0, length) of sequence `seq`."""
        self._lib.llama_memory_seq_rm(self._memory, seq, length, -1)

    def copy(self, src: int, dst: int, length: int) -> None:
        """Sequence `dst` becomes positions [0, length) of `src` (and nothing else)."""
        self.drop(dst)
        self._lib.llama_memory_seq_cp(self._memory, src, dst, 0, length)

    def close(self) -> None:
        lib = getattr(self, "_lib", None)
        if lib is None:
            return
        if self._batch is not None:
            lib.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx:
            lib.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            lib.llama_model_free(self._model)
            self._model = None

    def __del__(self):  # a context left open holds its whole KV cache
        try:
            self.close()
        except Exception:
            pass

