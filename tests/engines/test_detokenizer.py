"""Incremental detokenization and exact stop strings."""

from __future__ import annotations

import pytest

from shipyard.engines.detokenizer import IncrementalDetokenizer
from shipyard.engines.stop_strings import StopStringMatcher


@pytest.mark.parametrize("text", ["héllo wörld — 日本語のテキスト 🚀 done", "plain ascii text, with spaces  and\nnewlines"])
def test_incremental_decode_equals_full_decode(tokenizer, text):
    ids = tokenizer.encode(text)
    detok = IncrementalDetokenizer(tokenizer, tokenizer.encode("prefix"))
    pieces = [detok.add(i) for i in ids]
    assert "".join(pieces) + detok.flush() == tokenizer.decode(ids)
    assert not any("\ufffd" in p for p in pieces)  # partial characters are held, never emitted


def _feed_all(stops, deltas):
    matcher = StopStringMatcher(stops)
    out = ""
    for delta in deltas:
        text, stop = matcher.feed(delta)
        out += text
        if stop is not None:
            return out, stop
    return out + matcher.flush(), None


@pytest.mark.parametrize("stops, deltas, expected", [
    (["END"], ["abc", "E", "N", "D", "xyz"], ("abc", "END")),
    (["END"], ["abcEN", "x"], ("abcENx", None)),
    (["\n\n"], ["a\n", "\nb"], ("a", "\n\n")),
    (["ab", "b"], ["xab"], ("x", "ab")),
    (["stop"], ["no st", "o", "p"], ("no ", "stop")),
    ([], ["anything"], ("anything", None)),
    (["aaa"], ["aa", "aa"], ("", "aaa")),
])
def test_stop_strings(stops, deltas, expected):
    assert _feed_all(stops, deltas) == expected


def test_held_text_is_released_when_it_diverges():
    matcher = StopStringMatcher(["STOP"])
    assert matcher.feed("abcST") == ("abc", None)
    assert matcher.feed("x") == ("STx", None)
