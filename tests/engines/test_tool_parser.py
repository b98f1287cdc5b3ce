"""Tool calls read out of streamed text, per model family: whatever the pieces' sizes, the
merged deltas are the calls the text holds, and text that only looks like a call stays content."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from shipyard.engines.structured import merge_deltas
from shipyard.engines.tools.formats import HERMES, LLAMA3_JSON, MISTRAL
from shipyard.engines.tools.parser import ToolCallParser


def _parse(fmt, text: str, step: int):
    parser, content, deltas = ToolCallParser(fmt), "", []
    for i in range(0, len(text), step):
        c, d = parser.feed(text[i: i + step])
        content, deltas = content + c, deltas + d
    c, d = parser.flush()
    return content + c, [(call.name, call.arguments) for call in merge_deltas(deltas + d)]


LONG = {"text": "x" * 20_000, "items": list(range(500))}


@pytest.mark.parametrize("step", [1, 3, 17, 10_000])
@pytest.mark.parametrize("fmt, text, content, calls", [
    (HERMES, 'Sure <tool_call>\n{"name": "a", "arguments": {"q": "}{"}}\n</tool_call>\n<tool_call>\n'
             '{"name": "b", "arguments": {}}\n</tool_call>', "Sure ", [("a", '{"q": "}{"}'), ("b", "{}")]),
    (HERMES, '<tool_call>{"arguments": {"x": 1}, "name": "late"}</tool_call>', "", [("late", '{"x": 1}')]),
    (HERMES, "no call here <tool_ but <b>", "no call here <tool_ but <b>", []),
    (HERMES, "<tool_call>\nnot json</tool_call> tail", "<tool_call>\nnot json</tool_call> tail", []),
    (LLAMA3_JSON, '{"name": "f", "parameters": {"a": "b"}}; {"name": "g", "parameters": {}}', "",
     [("f", '{"a": "b"}'), ("g", "{}")]),
    (LLAMA3_JSON, 'Hello {"name": 1}', 'Hello {"name": 1}', []),
    (MISTRAL, '[TOOL_CALLS][{"name": "f", "arguments": {"a": 1}}, {"name": "g", "arguments": "{\\"z\\": 2}"}]',
     "", [("f", '{"a": 1}'), ("g", '{"z": 2}')]),
    (HERMES, f'<tool_call>\n{{"name": "big", "arguments": {json.dumps(LONG)}}}\n</tool_call>', "",
     [("big", json.dumps(LONG))]),
])
def test_calls_out_of_streamed_text(fmt, text, content, calls, step):
    assert _parse(fmt, text, step) == (content, calls)


async def test_an_embedding_model_that_hangs_is_a_timeout():
    from shipyard.engines.embedding_engine import EmbeddingEngine
    from shipyard.engines.errors import EngineTimeoutError
    from shipyard.engines.settings import EmbeddingEngineConfig

    engine = EmbeddingEngine(EmbeddingEngineConfig(timeout_s=0.3), "e")
    await engine.start()
    try:
        ids = await engine.tokenize(["hello"])
        real = engine._forward
        engine._forward = lambda rows: (time.sleep(1.0), real(rows))[1]  # a frozen forward
        with pytest.raises(EngineTimeoutError):
            await engine.embed(ids)
        engine._forward = real
        await asyncio.sleep(1.0)  # the frozen batch ends; the next call is answered
        assert (await engine.embed(ids)).shape == (1, 384)
    finally:
        await engine.stop()
