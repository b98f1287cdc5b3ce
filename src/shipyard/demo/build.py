"""Build the demo model (a small trained Llama) and tiny random models for tests.

Deterministic given the seed: the corpus order is fixed, the tokenizer trainer is
deterministic, and training runs with a fixed seed, batch order and thread count.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from shipyard.demo.corpus import build_corpus, corpus_fingerprint

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class DemoSpec:
    vocab_size: int = 4096
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 8
    num_kv_heads: int = 4
    intermediate_size: int = 704
    max_position_embeddings: int = 1024
    seq_len: int = 128
    batch_size: int = 16
    steps: int = 400
    learning_rate: float = 3e-3
    seed: int = 0
    threads: int = 2

    def fingerprint(self) -> str:
        import hashlib

        payload = json.dumps({**asdict(self), "corpus": corpus_fingerprint(), "format": 1}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


DEMO = DemoSpec()
# Tests: a few seconds to build, random weights.
TINY = DemoSpec(vocab_size=1024, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                intermediate_size=128, max_position_embeddings=512, steps=0)


def cache_root() -> Path:
    root = os.environ.get("SHIPYARD_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "shipyard"
    )
    return Path(root)


def default_demo_path(spec: DemoSpec = DEMO) -> Path:
    return cache_root() / "models" / f"demo-{spec.fingerprint()}"


def _chat_examples(documents: list[str]) -> list[str]:
    """Teach the chat format (and to end turns with <|im_end|>) from the reference topics."""
    from pydoc_data.topics import topics

    examples = []
    for key in sorted(topics):
        answer = topics[key].strip().split("\n\n")[0][:400]
        examples.append(
            f"<|im_start|>user\nWhat is {key} in Python?<|im_end|>\n<|im_start|>assistant\n{answer}<|im_end|>\n"
        )
    return examples


def train_tokenizer(documents: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(documents, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
        unk_token=None,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _llama_config(spec: DemoSpec, tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=[tokenizer.convert_tokens_to_ids("<|endoftext|>"), tokenizer.convert_tokens_to_ids("<|im_end|>")],
        pad_token_id=tokenizer.convert_tokens_to_ids("<|pad|>"),
    )


def _save(model, tokenizer, out_dir: Path, meta: dict) -> Path:
    from transformers import GenerationConfig

    tmp = out_dir.with_name(out_dir.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(
        eos_token_id=model.config.eos_token_id, pad_token_id=model.config.pad_token_id, bos_token_id=model.config.bos_token_id
    )
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "shipyard-demo.json").write_text(json.dumps(meta, indent=2))
    if out_dir.exists():
        import shutil

        shutil.rmtree(out_dir)
    tmp.rename(out_dir)  # atomic: a half-built model never looks complete
    return out_dir


def build_model(
    out_dir: Path,
    spec: DemoSpec = DEMO,
    progress: Callable[[int, int, float], None] | None = None,
    corpus_chars: int | None = None,
) -> Path:
    """Train the tokenizer, then `spec.steps` steps of next-token prediction (0: random weights)."""
    import torch
    from transformers import LlamaForCausalLM

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(spec.threads)
    try:
        random.seed(spec.seed)
        torch.manual_seed(spec.seed)
        documents = build_corpus(max_chars=corpus_chars)
        chat = _chat_examples(documents)
        tokenizer = train_tokenizer(documents + chat, spec.vocab_size)
        model = LlamaForCausalLM(_llama_config(spec, tokenizer))
        loss_value = float("nan")
        if spec.steps:
            loss_value = _train(model, tokenizer, documents + chat, spec, progress)
        meta = {"spec": asdict(spec), "fingerprint": spec.fingerprint(), "final_loss": loss_value}
        return _save(model, tokenizer, Path(out_dir), meta)
    finally:
        torch.set_num_threads(previous_threads)


def _train(model, tokenizer, documents: list[str], spec: DemoSpec, progress) -> float:
    import torch

    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    stream: list[int] = []
    for doc in documents:
        stream.extend(tokenizer.encode(doc, add_special_tokens=False))
        stream.append(eot)
    data = torch.tensor(stream, dtype=torch.long)
    windows = (len(data) - 1) // spec.seq_len
    generator = torch.Generator().manual_seed(spec.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, weight_decay=0.05, betas=(0.9, 0.95))
    warmup = max(1, spec.steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, spec.steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    model.train()
    ema = None
    for step in range(spec.steps):
        starts = torch.randint(0, windows, (spec.batch_size,), generator=generator) * spec.seq_len
        batch = torch.stack([data[s : s + spec.seq_len + 1] for s in starts.tolist()])
        logits = model(input_ids=batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        ema = loss.item() if ema is None else 0.9 * ema + 0.1 * loss.item()
        if progress is not None:
            progress(step + 1, spec.steps, ema)
    model.eval()
    return float(ema or float("nan"))


# Architectures the engine must serve; tests build each with random weights.
def build_random_model(out_dir: Path, architecture: str, tokenizer_source: Path) -> Path:
    """A tiny random model of `architecture` sharing the tokenizer saved at `tokenizer_source`."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, MistralConfig, MistralForCausalLM
    from transformers import PhiConfig, PhiForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    common = dict(vocab_size=len(tokenizer), eos_token_id=eot, bos_token_id=eot)
    if architecture == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=512, **common))
    elif architecture == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2,
                                             max_position_embeddings=512, **common))
    elif architecture == "mistral":
        model = MistralForCausalLM(MistralConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                                 num_attention_heads=4, num_key_value_heads=2, sliding_window=None,
                                                 max_position_embeddings=512, **common))
    elif architecture == "phi":
        model = PhiForCausalLM(PhiConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, max_position_embeddings=512, **common))
    else:
        raise ValueError(f"unknown architecture {architecture!r}")
    return _save(model, tokenizer, Path(out_dir), {"architecture": architecture, "random": True})
