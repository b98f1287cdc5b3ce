"""One choice of one request, from waiting to finished."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import torch

from shipyard.engines.base import SamplingParams, Timings, TokenLogprob
from shipyard.engines.detokenizer import IncrementalDetokenizer
from shipyard.engines.stop_strings import StopStringMatcher
from shipyard.engines.structured import ToolCallDelta
from shipyard.engines.tools.parser import ToolCallParser


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    request_id: str
    index: int  # choice index within the request
    prompt_ids: list[int]
    params: SamplingParams
    max_tokens: int
    eos_token_ids: frozenset[int]
    detokenizer: IncrementalDetokenizer
    stop_matcher: StopStringMatcher
    timings: Timings
    generator: torch.Generator | None = None  # set when the request gave a seed
    output_ids: list[int] = field(default_factory=list)
    slot: int = -1
    status: SequenceStatus = SequenceStatus.WAITING
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    # Output since the last chunk was emitted
    pending_text: str = ""
    pending_ids: list[int] = field(default_factory=list)
    pending_logprobs: list[TokenLogprob] = field(default_factory=list)
    # Per-token occurrence counts over the output, only for requests with penalties
    output_counts: torch.Tensor | None = None
    # Confidence of the output so far: sum and min of the chosen tokens' logprobs, sum of entropies
    logprob_sum: float = 0.0
    logprob_min: float = 0.0
    entropy_sum: float = 0.0
    scored_tokens: int = 0
    compute_s: float = 0.0  # its share of the steps it took part in
    # Structured output: the grammar's matcher (llguidance) and the tool-call parser, when asked
    matcher: Any = None
    tool_parser: ToolCallParser | None = None
    pending_tool_calls: list[ToolCallDelta] = field(default_factory=list)

    def score(self, logprob: float, entropy: float) -> None:
        """One more chosen token's logprob and its distribution's entropy."""
        self.logprob_min = logprob if not self.scored_tokens else min(self.logprob_min, logprob)
        self.logprob_sum += logprob
        self.entropy_sum += entropy
        self.scored_tokens += 1

    def confidence(self) -> dict | None:
        if not self.scored_tokens:
            return None
        return {"mean_logprob": self.logprob_sum / self.scored_tokens, "min_logprob": self.logprob_min,
                "mean_entropy": self.entropy_sum / self.scored_tokens, "tokens": self.scored_tokens}

    @property
    def length(self) -> int:
        """Tokens whose keys/values are (or will be, for the last sampled one) in the cache."""
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def last_token(self) -> int:
        return self.output_ids[-1] if self.output_ids else self.prompt_ids[-1]

    @property
    def needs_penalties(self) -> bool:
        p = self.params
        return p.presence_penalty != 0.0 or p.frequency_penalty != 0.0 or p.repetition_penalty != 1.0


@dataclass(eq=False)
class SequenceGroup:
    """All `n` choices of one request: prefilled once, then forked."""

    request_id: str
    sequences: list[Sequence]
    prompt_ids: list[int]
    cache_salt: str = ""  # the request's partition (its tenant): prefix blocks are never shared across it
    prompt_logprobs: list[TokenLogprob] | None = None  # computed at prefill, sent once
    cached_tokens: int = 0  # prompt tokens whose keys/values came from the prefix cache
    grammar: str | None = None  # the output's grammar: each sequence gets a matcher on the engine thread

    @property
    def finished(self) -> bool:
        return all(s.status is SequenceStatus.FINISHED for s in self.sequences)

    @property
    def completion_tokens(self) -> int:
        return sum(len(s.output_ids) for s in self.sequences)
