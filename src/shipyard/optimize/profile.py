"""What a deployment decision needs to know about the machine and the model.

`HardwareProfile.detect()` reads the CPU (cores, AVX2 / AVX-512 / AMX from /proc/cpuinfo), the
memory (/proc/meminfo) and the GPUs (torch.cuda: memory and compute capability).
`ModelProfile.read(path)` reads a Hugging Face folder's config.json and weight headers (or a GGUF
file's metadata) without loading a tensor: architecture, parameter count, layers and heads,
context length, the KV-cache bytes each token costs, and any quantization it already has.
Both are plain data, so selection (select.py) can be tested on any (hardware, model) pair.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path

GiB = 1024**3


@dataclass(frozen=True)
class GPU:
    name: str
    memory_bytes: int
    capability: tuple[int, int]  # (8, 0) A100, (8, 9) L4/4090, (9, 0) H100

    @property
    def fp8(self) -> bool:
        """fp8 tensor cores: Ada (8.9) and Hopper (9.0) onwards."""
        return self.capability >= (8, 9)

    @property
    def bf16(self) -> bool:
        return self.capability >= (8, 0)


@dataclass(frozen=True)
class HardwareProfile:
    cpu_cores: int
    memory_bytes: int
    cpu_flags: frozenset[str] = frozenset()
    gpus: tuple[GPU, ...] = ()
    vllm_installed: bool = False
    llamacpp_installed: bool = False

    @property
    def avx2(self) -> bool:
        return "avx2" in self.cpu_flags

    @property
    def avx512(self) -> bool:
        return "avx512f" in self.cpu_flags

    @property
    def amx(self) -> bool:
        return "amx_tile" in self.cpu_flags

    @property
    def int8_dot(self) -> bool:
        """int8 dot-product instructions (VNNI, AMX): what makes int8 matmuls beat fp32 on a CPU.
        Measured here: on AVX2 without them, torchao's int8 linear layers are 3-7x slower than fp32."""
        return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & self.cpu_flags)

    @classmethod
    def detect(cls) -> HardwareProfile:
        import importlib.util

        return cls(cpu_cores=len(os.sched_getaffinity(0)), memory_bytes=_memory_bytes(), cpu_flags=_cpu_flags(),
                   gpus=_gpus(), vllm_installed=importlib.util.find_spec("vllm") is not None,
                   llamacpp_installed=importlib.util.find_spec("llama_cpp") is not None)

    def describe(self) -> str:
        isa = "/".join(name for name, has in (("AVX2", self.avx2), ("AVX-512", self.avx512),
                                              ("VNNI", self.int8_dot and not self.amx), ("AMX", self.amx))
                       if has) or "no AVX2"
        gpus = ", ".join(f"{g.name} {g.memory_bytes / GiB:.0f} GiB (sm {g.capability[0]}.{g.capability[1]})"
                         for g in self.gpus) or "no GPU"
        return f"{self.cpu_cores} CPU cores ({isa}), {self.memory_bytes / GiB:.0f} GiB RAM, {gpus}"


def _memory_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _cpu_flags() -> frozenset[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _gpus() -> tuple[GPU, ...]:
    try:
        import torch
    except ImportError:
        return ()
    if not torch.cuda.is_available():
        return ()
    found = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        found.append(GPU(props.name, int(props.total_memory), (props.major, props.minor)))
    return tuple(found)


# ------------------------------------------------------------------------------------ model
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1,
                "I8": 1, "U8": 1, "I32": 4, "I64": 8, "F64": 8, "BOOL": 1}


@dataclass(frozen=True)
class ModelProfile:
    path: str
    architecture: str
    parameters: int
    num_layers: int
    hidden_size: int
    num_kv_heads: int
    head_dim: int
    context_length: int
    dtype: str = "float32"  # of the weights on disk
    weight_bytes: int = 0  # on disk
    quantization: str | None = None  # gptq, awq, fp8, ... or a GGUF file type (q4_k_m, q8_0, f16)
    file_format: str = "hf"  # or "gguf"
    extra: dict = field(default_factory=dict)

    @property
    def architecture_is_llama_like(self) -> bool:
        """Decoder blocks with q/k/v_proj and gate/up/down_proj (what AWQ's scale folding knows)."""
        return self.file_format == "hf" and any(name in self.architecture for name in
                                                ("Llama", "Qwen2", "Mistral", "Qwen3"))

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """Keys and values of one token in every layer."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * dtype_bytes

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def read(cls, path: str | Path) -> ModelProfile:
        """NotAModel (with what is wrong) for anything but a readable model."""
        path = Path(path).expanduser()
        try:
            if path.is_file() and path.suffix == ".gguf":
                return _read_gguf(path)
            config_path = path / "config.json"
            if not config_path.is_file():
                raise NotAModel(f"{path} is neither a Hugging Face model folder (no config.json) nor a .gguf file")
            return _read_hf(path, json.loads(config_path.read_text()))
        except NotAModel:
            raise
        except (OSError, ValueError, TypeError, KeyError) as exc:  # unreadable, or not a causal LM's config
            raise NotAModel(f"{path} is not a model Shipyard can read: {type(exc).__name__}: {exc}"[:500]) from None


class NotAModel(ValueError):
    """The path is not a model Shipyard can read (the message says why)."""


def _read_hf(path: Path, config: dict) -> ModelProfile:
    text = config.get("text_config", config)  # multimodal configs nest the language model's
    hidden = int(text.get("hidden_size") or text.get("n_embd") or text.get("d_model"))
    layers = int(text.get("num_hidden_layers") or text.get("n_layer"))
    heads = int(text.get("num_attention_heads") or text.get("n_head"))
    kv_heads = int(text.get("num_key_value_heads") or heads)
    head_dim = int(text.get("head_dim") or hidden // heads)
    context = int(text.get("max_position_embeddings") or text.get("n_positions") or 2048)
    parameters, weight_bytes, dtype = _weights(path)
    if not parameters:  # no readable weight headers: the usual estimate from the shapes
        vocab = int(text.get("vocab_size", 32000))
        inter = int(text.get("intermediate_size") or 4 * hidden)
        parameters = layers * (4 * hidden * hidden + 3 * hidden * inter) + 2 * vocab * hidden
    quant = config.get("quantization_config") or {}
    quantization = quant.get("quant_method") or quant.get("quant_type")
    architectures = config.get("architectures") or [config.get("model_type", "unknown")]
    return ModelProfile(str(path), architectures[0], parameters, layers, hidden, kv_heads, head_dim, context,
                        dtype or str(config.get("torch_dtype") or "float32"), weight_bytes,
                        str(quantization).lower() if quantization else None)


def _weights(path: Path) -> tuple[int, int, str | None]:
    """Parameter count, bytes and dtype from the safetensors headers (no tensor is read)."""
    parameters = size = 0
    dtypes: dict[str, int] = {}
    for file in sorted(path.glob("*.safetensors")):
        with open(file, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            count = 1
            for dim in info["shape"]:
                count *= dim
            parameters += count
            size += count * _DTYPE_BYTES.get(info["dtype"], 2)
            dtypes[info["dtype"]] = dtypes.get(info["dtype"], 0) + count
    dominant = max(dtypes, key=dtypes.get) if dtypes else None
    names = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
    return parameters, size, names.get(dominant, dominant.lower() if dominant else None)


def _read_gguf(path: Path) -> ModelProfile:
    from gguf import GGUFReader, LlamaFileType

    reader = GGUFReader(path)

    def value(key: str, default=None):
        item = reader.fields.get(key)
        if item is None:
            return default
        data = item.parts[item.data[0]]
        return bytes(data).decode() if item.types and item.types[0].name == "STRING" else data.tolist()[0]

    arch = value("general.architecture", "llama")
    hidden = int(value(f"{arch}.embedding_length", 0))
    heads = int(value(f"{arch}.attention.head_count", 1))
    kv_heads = int(value(f"{arch}.attention.head_count_kv", heads))
    parameters = sum(int(t.n_elements) for t in reader.tensors)
    file_type = value("general.file_type")
    quantization = LlamaFileType(file_type).name.removeprefix("MOSTLY_").removeprefix("ALL_").lower() \
        if file_type is not None else None
    return ModelProfile(str(path), arch, parameters, int(value(f"{arch}.block_count", 0)), hidden, kv_heads,
                        int(value(f"{arch}.attention.key_length", hidden // max(heads, 1))),
                        int(value(f"{arch}.context_length", 2048)), "gguf", path.stat().st_size, quantization, "gguf")
