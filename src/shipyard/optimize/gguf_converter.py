"""Run llama.cpp's convert_hf_to_gguf.py, teaching it two things about tokenizers it guesses at.

Usage: python -m shipyard.optimize.gguf_converter LLAMA_CPP_DIR MODEL_DIR [converter flags...]

- A Llama-architecture model without `tokenizer.model` has no SentencePiece vocabulary; the
  converter tries SentencePiece first and, when the `sentencepiece` package is missing, fails
  with an import error instead of moving on to the byte-level BPE path. Treat that as "no file".
- The converter names a BPE pre-tokenizer by hashing how a fixed text tokenizes, and refuses
  hashes it has not listed. A tokenizer whose `tokenizer.json` declares a plain byte-level
  pre-tokenizer with GPT-2's split regex (what Shipyard's demo and test models use) is exactly
  llama.cpp's "gpt-2" pre-tokenizer, so name it that; anything else still refuses.
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path


def _is_gpt2_byte_level(model_dir: Path) -> bool:
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        return False
    pre = json.loads(path.read_text()).get("pre_tokenizer") or {}
    return pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space")


def _teach(base_module) -> None:
    text_model = base_module.TextModel
    create_sentencepiece = text_model._create_vocab_sentencepiece
    vocab_base_pre = text_model.get_vocab_base_pre

    def _create_vocab_sentencepiece(self):
        if not (self.dir_model / "tokenizer.model").is_file():
            raise FileNotFoundError(f"no SentencePiece model in {self.dir_model}")
        return create_sentencepiece(self)

    def get_vocab_base_pre(self, tokenizer) -> str:
        try:
            return vocab_base_pre(self, tokenizer)
        except NotImplementedError:
            if _is_gpt2_byte_level(Path(self.dir_model)):
                return "gpt-2"
            raise

    text_model._create_vocab_sentencepiece = _create_vocab_sentencepiece
    text_model.get_vocab_base_pre = get_vocab_base_pre


def main() -> None:
    llama_cpp_dir, *converter_args = sys.argv[1:]
    sys.path[:0] = [llama_cpp_dir, str(Path(llama_cpp_dir) / "gguf-py")]
    import conversion.base

    _teach(conversion.base)
    sys.argv = [str(Path(llama_cpp_dir) / "convert_hf_to_gguf.py"), *converter_args]
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
