"""The embedded engine on a GPU vs transformers' static-batch generate(), one run (a lent GPU).

    python bench/gpu.py [--concurrency 1 32 128] [--prompt 128] [--new 128]

A random-weight model of Llama-3.2-1B's shape in bf16 (vocab 128,256: the per-step logits are
as large as the real model's), 128-token prompts, 128 new tokens each (EOS ignored). For each
concurrency: the engine's tokens/s with that many requests submitted at once (its async API in
this process: the server's path minus HTTP), and `model.generate()` on a batch of that size.
Self-contained: needs torch with CUDA, transformers, tokenizers and pydantic. Prints a table;
writes bench/results/gpu.json (and $OUT/gpu.json when run through the device tool).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def build_model(folder: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from shipyard.demo.build import train_tokenizer
    from shipyard.demo.corpus import build_corpus

    tokenizer = train_tokenizer(build_corpus(max_chars=200_000), 4096)
    config = LlamaConfig(vocab_size=128_256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=2048,
                         tie_word_embeddings=True, rope_theta=500_000.0, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


async def engine_tokens_per_s(folder: Path, concurrency: int, prompt_len: int, new: int, engine) -> float:
    from shipyard.engines.base import GenerationRequest, Prompt, SamplingParams

    async def one(index: int) -> int:
        ids = [(17 * index + 31 * i) % 4000 + 5 for i in range(prompt_len)]
        request = GenerationRequest(f"b-{concurrency}-{index}", Prompt(token_ids=ids),
                                    SamplingParams(max_tokens=new, temperature=0.0, ignore_eos=True), prompt_ids=ids)
        count = 0
        async for chunk in engine.generate(request):
            count += len(chunk.token_ids) or chunk.num_tokens
        return count

    await one(-1)  # warm-up
    started = time.perf_counter()
    counts = await asyncio.gather(*(one(i) for i in range(concurrency)))
    return sum(counts) / (time.perf_counter() - started)


def generate_tokens_per_s(model, concurrency: int, prompt_len: int, new: int) -> float:
    import torch

    ids = torch.randint(5, 4000, (concurrency, prompt_len), device="cuda")
    with torch.inference_mode():
        model.generate(ids[:1], max_new_tokens=4, min_new_tokens=4, do_sample=False)  # warm-up
        torch.cuda.synchronize()
        started = time.perf_counter()
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                             do_sample=False)
        torch.cuda.synchronize()
    return (out.shape[1] - prompt_len) * concurrency / (time.perf_counter() - started)


async def profile_decode(engine, args) -> str:
    """Where a concurrency-1 decode step's time goes: the top operators, and kernels per step."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        await engine_tokens_per_s(None, 1, args.prompt, 32, engine)
    events = prof.key_averages()
    kernels = sum(e.count for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    table = events.table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=60)
    return f"{kernels} CUDA kernels for ~{2 * 33} forward passes (warm-up included)\n{table}"


async def run_engine(folder: Path, args) -> dict[int, float]:
    from shipyard.engines.transformers_engine.engine import TransformersEngine, TransformersEngineConfig

    engine = TransformersEngine(TransformersEngineConfig(
        model=str(folder), device="cuda", dtype="bfloat16", max_model_len=args.prompt + args.new + 8,
        max_num_seqs=max(args.concurrency), max_prefill_tokens=8192), "bench")
    await engine.start()
    while not engine.ready():
        await asyncio.sleep(0.1)
    try:
        figures = {c: await engine_tokens_per_s(folder, c, args.prompt, args.new, engine) for c in args.concurrency}
        if args.profile:
            print(await profile_decode(engine, args))
        return figures
    finally:
        await engine.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32, 128])
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--profile", action="store_true", help="also profile decode steps at concurrency 1")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("bench/gpu.py needs a CUDA GPU (run it through the device tool)")
    with tempfile.TemporaryDirectory(prefix="shipyard-gpu-") as tmp:
        folder = build_model(Path(tmp) / "llama-1b-shape")
        engine = asyncio.run(run_engine(folder, args))
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).to("cuda").eval()
        static = {c: generate_tokens_per_s(model, c, args.prompt, args.new) for c in args.concurrency}
    results = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "prompt": args.prompt,
               "new_tokens": args.new, "engine_tokens_per_s": engine, "generate_tokens_per_s": static,
               "ratio": {c: engine[c] / static[c] for c in args.concurrency}}
    print(f"\n{'concurrency':<12}{'engine tok/s':>14}{'generate() tok/s':>18}{'ratio':>8}   ({results['gpu']})")
    for c in args.concurrency:
        print(f"{c:<12}{engine[c]:>14.0f}{static[c]:>18.0f}{engine[c] / static[c]:>8.2f}")
    for folder in (ROOT / "bench" / "results", Path(os.environ["OUT"]) if os.environ.get("OUT") else None):
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "gpu.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
