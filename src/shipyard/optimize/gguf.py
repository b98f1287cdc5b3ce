"""Convert a local Hugging Face model to GGUF, the file format llama.cpp serves.

The converter is llama.cpp's own `convert_hf_to_gguf.py` with the `gguf` package beside it, taken
from the llama-cpp-python source release that `scripts/llama-cpp.sh` keeps under ~/.cache (the
same version as the installed wheel, so the file and the runtime agree on the format). It runs
in a child process: it imports torch and its model zoo, and a failure must not take the caller
down. Outputs are cached by the model's content hash, so converting twice is instant.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from shipyard.engines.build_cache import LLAMA_CPP_PYTHON_VERSION, cache_root, llama_cpp_sdist

OUTTYPES = ("f32", "f16", "bf16", "q8_0")  # what the converter writes itself
QUANTIZED = ("q4_k_m", "q5_k_m", "q6_k", "q4_0")  # llama.cpp's quantizer, from an f16 file


class GGUFError(RuntimeError):
    pass


def converter_dir(version: str = LLAMA_CPP_PYTHON_VERSION) -> Path:
    """The vendored llama.cpp folder holding convert_hf_to_gguf.py, or a clear error."""
    folder = llama_cpp_sdist(version).parent / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"
    if not (folder / "convert_hf_to_gguf.py").is_file():
        raise GGUFError(f"llama.cpp's converter is not in {folder}; run `scripts/llama-cpp.sh .venv/bin` "
                        "(make test and make serve do) to fetch llama-cpp-python's source release")
    return folder


_fingerprints: dict[tuple[str, str], str] = {}  # (folder, its files' names, sizes and times) → content hash


def model_fingerprint(model_dir: Path) -> str:
    """A hash of the files that decide the converted output (weights, config, tokenizer). Read
    once per process while the files stay as they are: a deploy builds several candidates of one
    model, and a 7B folder takes seconds to read."""
    from shipyard.engines.base import path_identity

    key = (str(model_dir), path_identity(str(model_dir)))
    if key not in _fingerprints:
        _fingerprints[key] = _content_hash(Path(model_dir))
    return _fingerprints[key]


def _content_hash(model_dir: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in model_dir.iterdir() if p.is_file()):
        digest.update(path.name.encode())
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def convert_to_gguf(model_dir: Path, outtype: str = "f16", out_file: Path | None = None,
                    timeout_s: float = 1800, base: str = "f16") -> Path:
    """Convert `model_dir` to one GGUF file (cached by content hash unless `out_file` is given).
    k-quants (q4_k_m ...) are made from the `base` conversion by llama.cpp's quantizer (f32 for
    weights already on a 4-bit grid, which f16 would round off it)."""
    if outtype in QUANTIZED:
        source = convert_to_gguf(model_dir, base, timeout_s=timeout_s)
        target = out_file or source.with_name(source.name.replace(f"-{base}.gguf", f"-{outtype}.gguf"))
        return quantize_gguf(source, outtype, target)
    if outtype not in OUTTYPES:
        raise GGUFError(f"outtype must be one of {', '.join(OUTTYPES + QUANTIZED)}, not {outtype!r}")
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise GGUFError(f"{model_dir} is not a Hugging Face model folder (no config.json)")
    if out_file is None:
        out_file = cache_root() / "gguf" / f"{model_dir.name}-{model_fingerprint(model_dir)}-{outtype}.gguf"
        if out_file.is_file():
            return out_file
    out_file.parent.mkdir(parents=True, exist_ok=True)
    partial = out_file.with_suffix(".partial")
    command = [sys.executable, "-m", "shipyard.optimize.gguf_converter", str(converter_dir()),
               str(model_dir), "--outfile", str(partial), "--outtype", outtype]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if result.returncode != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-8:])
        raise GGUFError(f"GGUF conversion of {model_dir} failed (exit {result.returncode}):\n{tail}")
    partial.replace(out_file)  # atomic: a reader never sees half a file
    return out_file


def quantize_gguf(source: Path, method: str, target: Path, threads: int | None = None) -> Path:
    """llama.cpp's own quantizer (llama_model_quantize) on a GGUF file; cached by target name."""
    if target.is_file():
        return target
    import llama_cpp

    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{method.upper()}", None)
    if ftype is None:
        raise GGUFError(f"llama.cpp has no quantization {method!r}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads or os.cpu_count() or 1
    partial = target.with_suffix(".partial")
    code = llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(), params)
    if code != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        raise GGUFError(f"llama.cpp could not quantize {source.name} to {method} (code {code})")
    partial.replace(target)
    return target
