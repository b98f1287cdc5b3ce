"""Grammar-constrained decoding for the embedded engines, with llguidance (the library behind
OpenAI's own structured outputs, llama.cpp's and vLLM's `guidance` backend).

A request's shape (engines/structured.py) becomes one grammar: a JSON schema, tool calls in the
model family's format (forced when `tool_choice` is required or named, lazily once a call begins
when it is auto), or either of the two. Each constrained sequence gets its own matcher; every
step, the rows that have one get a token mask, computed for all of them in one call on
llguidance's own threads, and their logits outside it are set to -inf before sampling.

JSON is written compactly, with `, ` and `: ` and no free whitespace: a model cannot pad an
answer with blanks until it runs out of tokens.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict

from shipyard.engines.base import Prompt, SamplingParams
from shipyard.engines.errors import InvalidRequestError
from shipyard.engines.tools.formats import HERMES, ToolFormat

_JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
MAX_GRAMMAR_BYTES = 256 * 1024  # a request's schemas and tools, as one grammar
_TEMPLATES = 64  # compiled grammars kept per tokenizer
# Calls in one answer when they are forced (tool_choice required): a model that repeats itself
# ends after this many instead of writing calls until it runs out of tokens.
MAX_PARALLEL_CALLS = 8


def _schema(schema: dict, strict: bool) -> str:
    """A JSON schema in the house style; keywords llguidance cannot enforce are refused when
    `strict`, and ignored otherwise (as OpenAI's non-strict mode promises nothing)."""
    options = {**_JSON_STYLE, "lenient": not strict}
    return json.dumps({**schema, "x-guidance": options}, separators=(",", ":"))


def _literal(text: str) -> str:
    return json.dumps(text)


def _call_rules(tools, fmt: ToolFormat) -> str:
    """One rule per tool: its call with the name fixed and schema-valid arguments."""
    rules = []
    for i, tool in enumerate(tools):
        rules.append(f"tool_{i}: {_literal(fmt.call_prefix(tool.name))} %json {_schema(tool.arguments_schema, tool.strict)} "
                     f"{_literal('}')}")
    return "\n".join(rules)


def _calls_grammar(tools, fmt: ToolFormat, parallel: bool, start_rule: str = "start") -> str:
    body = " | ".join(f"tool_{i}" for i in range(len(tools)))
    repeat = f"({_literal(fmt.separator)} call){{0,{MAX_PARALLEL_CALLS - 1}}}" if parallel else ""
    if fmt.list_form:
        call = f"call: {body}"
        head = f"{start_rule}: {_literal(fmt.start + '[')} call {repeat} {_literal(']')}"
    else:
        call = f"call: {_literal(fmt.call_open())} ({body}) {_literal(fmt.call_close())}"
        head = f"{start_rule}: call {repeat}"
    return "\n".join((head, call, _call_rules(tools, fmt)))


def _lazy_calls_grammar(tools, fmt: ToolFormat) -> str:
    """tool_choice auto: free text, and once the model opens a call, a well-formed one."""
    import llguidance

    tags = [llguidance.StructTag(trigger=fmt.start if fmt.name == "hermes" else '{"name"',
                                 begin=(fmt.call_open() + fmt.call_prefix(tool.name)) if fmt.name == "hermes"
                                 else fmt.call_prefix(tool.name),
                                 grammar=json.loads(_schema(tool.arguments_schema, tool.strict)),
                                 end="}" + fmt.call_close())
            for tool in tools]
    return llguidance.StructTag.to_grammar(tags, assume_special=False)


def grammar_for(prompt: Prompt, params: SamplingParams, fmt: ToolFormat = HERMES) -> str | None:
    """The grammar a request's output must keep to, or None when it is free."""
    import llguidance

    tools = list(prompt.tools or [])
    choice = params.tool_choice
    if tools and choice == "named":
        tools = [t for t in tools if t.name == params.tool_name]
        if not tools:
            raise InvalidRequestError(f"tool_choice names '{params.tool_name}', which is not among the tools.",
                                      "tool_choice", "invalid_value")
        return llguidance.LLMatcher.grammar_from_lark(_calls_grammar(tools, fmt, parallel=False))
    if tools and choice == "required":
        return llguidance.LLMatcher.grammar_from_lark(_calls_grammar(tools, fmt, params.parallel_tool_calls))
    answer = params.response_format
    if answer is not None:
        schema = _schema(answer.effective_schema, answer.strict or answer.type == "json_object")
        if tools and choice == "auto":  # the answer in its schema, or calls
            lark = f"start: %json {schema} | calls\n" + _calls_grammar(tools, fmt, params.parallel_tool_calls, "calls")
            return llguidance.LLMatcher.grammar_from_lark(lark)
        return llguidance.LLMatcher.grammar_from_lark(f"start: %json {schema}")
    if tools and choice == "auto":
        return _lazy_calls_grammar(tools, fmt)
    return None


_verdicts: OrderedDict[bytes, str] = OrderedDict()  # grammar digest → validation message ("" when valid)
_verdicts_lock = threading.Lock()


def _checked(grammar: str) -> str:
    """llguidance's verdict on a grammar, remembered by digest: up to 1,024 of them, a few dozen
    bytes each however large the grammars (the texts themselves are not kept)."""
    import hashlib

    import llguidance

    digest = hashlib.blake2b(grammar.encode(), digest_size=16).digest()
    with _verdicts_lock:
        if digest in _verdicts:
            _verdicts.move_to_end(digest)
            return _verdicts[digest]
    verdict = llguidance.LLMatcher.validate_grammar(grammar)
    with _verdicts_lock:
        _verdicts[digest] = verdict
        while len(_verdicts) > 1024:
            _verdicts.popitem(last=False)
    return verdict


def check_grammar(prompt: Prompt, params: SamplingParams, fmt: ToolFormat = HERMES) -> str | None:
    """The request's grammar, refused with a clear 400 when it cannot be built or is too large.
    Blocking (a new schema is compiled): call it off the event loop. Repeats are remembered."""
    try:
        grammar = grammar_for(prompt, params, fmt)
    except ValueError as exc:
        raise InvalidRequestError(f"The schema could not be read: {exc}", _param(params), "invalid_schema") from exc
    if grammar is None:
        return None
    if len(grammar) > MAX_GRAMMAR_BYTES:
        raise InvalidRequestError(f"The response format and tools make a grammar of {len(grammar)} bytes; the "
                                  f"limit is {MAX_GRAMMAR_BYTES}.", _param(params), "schema_too_large")
    error = _checked(grammar)
    if error and not error.startswith("WARNING"):
        raise InvalidRequestError(f"This schema cannot be enforced: {_short(error)}", _param(params),
                                  "invalid_schema")
    return grammar


def needs_grammar(prompt: Prompt, params: SamplingParams) -> bool:
    return params.response_format is not None or (bool(prompt.tools) and params.tool_choice != "none")


def _param(params: SamplingParams) -> str:
    return "response_format" if params.response_format is not None else "tools"


def _short(error: str) -> str:
    return error.splitlines()[0][:500] if error else "unknown error"


class GrammarCompiler:
    """One tokenizer's grammars: compiled once (an LRU of matchers), copied for each sequence."""

    def __init__(self, tokenizer, vocab_size: int, eos_token_ids):
        import llguidance
        import llguidance.hf

        self.vocab_size = vocab_size
        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size,
                                                      eos_token=sorted(eos_token_ids) or None)
        self._templates: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()
        self.executor = llguidance.LLExecutor()
        self.closing = _closing_tokens(tokenizer, vocab_size, eos_token_ids)

    def matcher(self, grammar: str):
        import llguidance

        with self._lock:
            template = self._templates.get(grammar)
            if template is not None:
                self._templates.move_to_end(grammar)
                return template.deep_copy()
        limits = llguidance.LLParserLimits(verbose_errors=False)
        template = llguidance.LLMatcher(self.tokenizer, grammar, log_level=0, limits=limits)
        if template.is_error():
            raise InvalidRequestError(f"This schema cannot be enforced: {_short(template.get_error())}", "response_format",
                                      "invalid_schema")
        with self._lock:
            self._templates[grammar] = template
            while len(self._templates) > _TEMPLATES:
                self._templates.popitem(last=False)
        return template.deep_copy()


def _closing_tokens(tokenizer, vocab_size: int, eos_token_ids):
    """A bool [vocab] mask of the tokens that only close JSON (`"`, `}`, `]`) or end the answer."""
    import torch

    mask = torch.zeros(vocab_size, dtype=torch.bool)
    pieces = tokenizer.convert_ids_to_tokens(list(range(vocab_size)))
    for token_id, piece in enumerate(pieces):
        if piece is None:
            continue
        text = tokenizer.convert_tokens_to_string([piece]).strip()
        if text and all(c in '"}]' for c in text):
            mask[token_id] = True
    for token_id in eos_token_ids:
        if 0 <= token_id < vocab_size:
            mask[token_id] = True
    return mask


# A constrained answer this close to its token limit is steered to close what it opened: among
# the tokens its grammar allows, those that close JSON are preferred (where there are any), so
# it ends parseable instead of being cut off mid-value.
CLOSING_BUDGET = 32


def allowed_tokens(matchers: list, vocab_size: int, executor):
    """A bool [rows, vocab] mask of the tokens each matcher allows next, computed for all rows in
    one call (llguidance's threads, without the GIL)."""
    import numpy as np
    import torch

    words = (vocab_size + 31) // 32
    bitmask = np.full((len(matchers), words), -1, dtype=np.int32)
    executor.unsafe_compute_mask_ptr([(m, i) for i, m in enumerate(matchers)], bitmask.ctypes.data, words * 4,
                                     len(matchers))
    bits = np.unpackbits(bitmask.view(np.uint8), axis=1, bitorder="little")[:, :vocab_size]
    return torch.from_numpy(bits).bool()
