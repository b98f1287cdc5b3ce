"""The demo model builder: deterministic given its seed, and loadable as a HF model folder."""

from __future__ import annotations

from dataclasses import replace

from shipyard.demo.build import TINY, build_model


def test_build_is_deterministic(tmp_path):
    spec = replace(TINY, steps=3, batch_size=2, seq_len=32)
    first = build_model(tmp_path / "a", spec, corpus_chars=50_000)
    second = build_model(tmp_path / "b", spec, corpus_chars=50_000)
    for name in ("model.safetensors", "tokenizer.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    other = build_model(tmp_path / "c", replace(spec, seed=1), corpus_chars=50_000)
    assert (first / "model.safetensors").read_bytes() != (other / "model.safetensors").read_bytes()


def test_demo_tokenizer_has_chat_template(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                             tokenize=False)
    assert rendered == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
