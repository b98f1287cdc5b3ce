"""A loaded model's side of structured outputs and tool calls: how it writes calls (read from its
chat template), whether its template renders tools, its grammar compiler (made on the first
constrained request: reading a vocabulary takes ~15 ms to ~1 s), and what each sequence of a
request gets: a matcher of the request's grammar and a tool-call parser."""

from __future__ import annotations

import threading

from shipyard.engines.base import Prompt, SamplingParams
from shipyard.engines.tools.formats import detect_format, template_knows_tools
from shipyard.engines.tools.parser import ToolCallParser


class OutputShapes:
    def __init__(self, loaded, sampler, tool_parser: str | None):
        template = getattr(loaded.tokenizer, "chat_template", None)
        template = template if isinstance(template, str) else None
        self.format = detect_format(template, tool_parser)
        self.native_tools = template_knows_tools(template)
        self._loaded, self._sampler = loaded, sampler
        self._compiler = None
        self._lock = threading.Lock()

    def compiler(self):
        with self._lock:
            if self._compiler is None:
                from shipyard.engines.grammar import GrammarCompiler

                loaded = self._loaded
                self._compiler = GrammarCompiler(loaded.tokenizer, loaded.vocab_size, loaded.eos_token_ids)
                self._sampler.grammars = self._compiler
            return self._compiler

    def grammar(self, prompt: Prompt, params: SamplingParams) -> str | None:
        """Blocking: the request's grammar, compiled and remembered (call it off the event loop
        first, through the engine's `prepare`; later calls only look it up)."""
        from shipyard.engines.grammar import check_grammar, needs_grammar

        if not needs_grammar(prompt, params):
            return None
        grammar = check_grammar(prompt, params, self.format)
        if grammar is not None:
            self.compiler().matcher(grammar)
        return grammar

    def matcher(self, grammar: str | None):
        return self.compiler().matcher(grammar) if grammar is not None else None

    @staticmethod
    def calls_tools(prompt: Prompt, params: SamplingParams) -> bool:
        return bool(prompt.tools) and params.tool_choice != "none"

    def skip_special_tokens(self, prompt: Prompt, params: SamplingParams) -> bool:
        """Call markers that are special tokens must reach the parser as text."""
        return params.skip_special_tokens and not (self.calls_tools(prompt, params) and self.format.special_start)

    def tool_parser(self, prompt: Prompt, params: SamplingParams) -> ToolCallParser | None:
        if not self.calls_tools(prompt, params):
            return None
        return ToolCallParser(self.format, single=not params.parallel_tool_calls)
