"""Per-row sampling for a batch in which every row has its own parameters.

Vectorised over the batch (one sort serves top-k and top-p for all rows); only the final draw of
a seeded row uses that row's own `torch.Generator`, so its tokens depend on its seed and its
logits alone, never on what else shares the batch.

Everything runs where the logits are: on a GPU, penalties, bias, top-k/p and the draws stay on
the device and only the chosen ids come back (one copy per step; logprobs only for the rows
that asked). On a CPU it is the same code, so the same seeds give the same ids.
"""

from __future__ import annotations

import torch

from shipyard.engines.base import TokenLogprob, TopLogprob
from shipyard.engines.detokenizer import TokenTextCache
from shipyard.engines.transformers_engine.sequence import Sequence

_GREEDY_BELOW = 1e-5


class Sampler:
    def __init__(self, vocab_size: int, token_text: TokenTextCache, device: torch.device | None = None,
                 confidence: bool = False, max_model_len: int = 1 << 30):
        self.vocab_size = vocab_size
        self.max_model_len = max_model_len
        self.token_text = token_text
        self.device = device or torch.device("cpu")
        # Every chosen token's logprob and its distribution's entropy (before penalties and
        # temperature: the model's own confidence), kept per sequence for the monitors.
        self.confidence = confidence
        self.grammars = None  # the engine's GrammarCompiler, set when it first constrains a request
        self._mask_thread = None

    def new_counts(self) -> torch.Tensor:
        """A sequence's output-token counts (for penalties), kept beside the logits."""
        return torch.zeros(self.vocab_size, device=self.device)

    def start_masks(self, seqs: list[Sequence]):
        """The grammar masks of these rows' next tokens, computed on another thread while the
        step's forward runs (their matchers' states are final since the last step); None when
        no row has a grammar. Hand the result to `__call__` with the same rows."""
        matchers = [s.matcher for s in seqs if s.matcher is not None]
        if len(matchers) < 2:  # one row's mask costs less than the hand-off to another thread
            return None
        if self._mask_thread is None:
            from concurrent.futures import ThreadPoolExecutor

            self._mask_thread = ThreadPoolExecutor(1, thread_name_prefix="shipyard-grammar")
        from shipyard.engines.grammar import allowed_tokens

        return self._mask_thread.submit(allowed_tokens, matchers, self.vocab_size, self.grammars.executor)

    def __call__(self, logits: torch.Tensor, seqs: list[Sequence], masks=None) -> list[tuple[int, TokenLogprob | None]]:
        """`logits` [B, V] float32, row i for `seqs[i]`; `masks` from `start_masks(seqs)`, if
        started. Returns (token id, logprob entry) per row."""
        logits = logits[:, : self.vocab_size]
        device = logits.device
        raw_logprobs = None
        if self.confidence or any(s.params.logprobs for s in seqs):
            raw_logprobs = torch.log_softmax(logits, dim=-1)
        logits = self._apply_penalties_and_bias(logits, seqs)
        logits = self._apply_grammar(logits, seqs, masks)

        picks = torch.empty(len(seqs), dtype=torch.long, device=device)
        greedy = [i for i, s in enumerate(seqs) if s.params.temperature < _GREEDY_BELOW]
        sampled = [i for i, s in enumerate(seqs) if s.params.temperature >= _GREEDY_BELOW]
        if greedy:
            rows = torch.tensor(greedy, dtype=torch.long, device=device)
            picks[rows] = logits[rows].argmax(dim=-1)
        if sampled:
            rows = torch.tensor(sampled, dtype=torch.long, device=device)
            picks[rows] = self._sample_rows(logits[rows], [seqs[i] for i in sampled])
        if self.confidence:  # still one copy to the host: ids (exact in float64), logprobs, entropies
            chosen = raw_logprobs.gather(1, picks.unsqueeze(1)).squeeze(1)
            entropy = torch.special.entr(raw_logprobs.exp()).sum(dim=-1)
            host = torch.cat([picks.double(), chosen.double(), entropy.double()]).tolist()
            n = len(seqs)
            tokens = [int(t) for t in host[:n]]
            for seq, logprob, ent in zip(seqs, host[n: 2 * n], host[2 * n:]):
                seq.score(logprob, ent)
        else:
            tokens = picks.tolist()  # the step's one copy to the host

        results: list[tuple[int, TokenLogprob | None]] = []
        for i, (seq, token) in enumerate(zip(seqs, tokens)):
            entry = self._logprob_entry(raw_logprobs[i], token, seq.params.top_logprobs) if seq.params.logprobs else None
            results.append((token, entry))
        return results

    def _apply_penalties_and_bias(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        rows = [i for i, s in enumerate(seqs) if s.needs_penalties or s.params.logit_bias]
        if not rows:
            return logits
        logits = logits.clone()
        for i in rows:
            seq, row = seqs[i], logits[i]
            p = seq.params
            if seq.needs_penalties:
                counts = seq.output_counts
                if counts is None:
                    counts = seq.output_counts = self.new_counts()
                if p.repetition_penalty != 1.0:
                    seen = counts > 0
                    seen[torch.tensor(seq.prompt_ids, dtype=torch.long, device=row.device)] = True
                    scaled = torch.where(row > 0, row / p.repetition_penalty, row * p.repetition_penalty)
                    row.copy_(torch.where(seen, scaled, row))
                if p.frequency_penalty:
                    row.sub_(p.frequency_penalty * counts)
                if p.presence_penalty:
                    row.sub_(p.presence_penalty * (counts > 0).float())
            if p.logit_bias:
                ids = torch.tensor(list(p.logit_bias.keys()), dtype=torch.long, device=row.device)
                row.index_add_(0, ids, torch.tensor(list(p.logit_bias.values()), dtype=row.dtype, device=row.device))
        return logits

    def _apply_grammar(self, logits: torch.Tensor, seqs: list[Sequence], masks=None) -> torch.Tensor:
        """Rows with a grammar keep only the tokens it allows next (structured outputs)."""
        rows = [i for i, s in enumerate(seqs) if s.matcher is not None]
        if not rows:
            return logits
        from shipyard.engines.grammar import CLOSING_BUDGET, allowed_tokens

        if masks is not None:
            allowed = masks.result()
        else:
            allowed = allowed_tokens([seqs[i].matcher for i in rows], self.vocab_size, self.grammars.executor)
        for j, i in enumerate(rows):  # near the token limit: close what is open, where the grammar lets it
            seq = seqs[i]
            if min(seq.max_tokens - len(seq.output_ids), self.max_model_len - seq.length) <= CLOSING_BUDGET:
                closing = allowed[j] & self.grammars.closing
                if closing.any():
                    allowed[j] = closing
        if len(rows) == len(seqs):  # every row constrained (logits are this step's own: masked in place)
            return logits.masked_fill_(~allowed.to(logits.device), float("-inf"))
        index = torch.tensor(rows, dtype=torch.long, device=logits.device)
        logits = logits.clone()
        logits[index] = logits[index].masked_fill(~allowed.to(logits.device), float("-inf"))
        return logits

    def _sample_rows(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        """The drawn ids, as a tensor on the logits' device (nothing is copied to the host here)."""
        device = logits.device
        temperatures = torch.tensor([s.params.temperature for s in seqs], dtype=logits.dtype, device=device)
        scores = logits / temperatures.unsqueeze(1)
        top_ks = [s.params.top_k if 0 < s.params.top_k < self.vocab_size else self.vocab_size for s in seqs]
        top_ps = [s.params.top_p for s in seqs]
        use_top_k = any(k < self.vocab_size for k in top_ks)
        use_top_p = any(p < 1.0 for p in top_ps)

        order = None
        if use_top_k or use_top_p:
            scores, order = scores.sort(dim=-1, descending=True)
            if use_top_k:
                ranks = torch.arange(scores.shape[1], device=device).unsqueeze(0)
                limits = torch.tensor(top_ks, device=device).unsqueeze(1)
                scores = scores.masked_fill(ranks >= limits, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        if use_top_p:
            # Keep the smallest prefix (in descending order) whose mass reaches top_p; the top token always stays.
            before = probs.cumsum(dim=-1) - probs
            probs = probs.masked_fill(before > torch.tensor(top_ps, dtype=probs.dtype, device=device).unsqueeze(1), 0.0)

        picks = torch.empty(len(seqs), dtype=torch.long, device=device)
        unseeded = [i for i, s in enumerate(seqs) if s.generator is None]
        for i, seq in enumerate(seqs):
            if seq.generator is not None:  # the row's own generator (on the same device)
                picks[i] = torch.multinomial(probs[i], 1, generator=seq.generator)[0]
        if unseeded:
            # Inverse-CDF sampling: one uniform draw per row against the running sum of its
            # probabilities (torch.multinomial costs ~10× more per row on a CPU). Seeded rows keep
            # multinomial, so a seed gives the same tokens as it always has.
            rows = torch.tensor(unseeded, dtype=torch.long, device=device) if len(unseeded) < len(seqs) else None
            cdf = (probs if rows is None else probs[rows]).cumsum(dim=1)
            total = cdf[:, -1:]
            draw = torch.minimum(torch.rand(cdf.shape[0], 1, dtype=cdf.dtype, device=device) * total,
                                 torch.nextafter(total, torch.zeros_like(total)))  # never past the last nonzero
            drawn = torch.searchsorted(cdf, draw, right=True).squeeze(1).clamp_(max=cdf.shape[1] - 1)
            if rows is None:
                picks = drawn
            else:
                picks[rows] = drawn
        if order is not None:
            picks = order.gather(1, picks.unsqueeze(1)).squeeze(1)
        return picks

    def prompt_logprobs(self, logits: torch.Tensor, prompt_ids: list[int], top_n: int) -> list[TokenLogprob]:
        """`logits` [L, V] of every prompt position: position i predicts prompt token i + 1, so the
        first token's logprob is None, as in OpenAI's echo and vLLM's prompt_logprobs."""
        logprobs = torch.log_softmax(logits[:-1, : self.vocab_size], dim=-1)
        text, raw = self.token_text.get(prompt_ids[0])
        entries: list[TokenLogprob | None] = [TokenLogprob(text, prompt_ids[0], None, raw, [])]
        if len(prompt_ids) > 1:
            targets = torch.tensor(prompt_ids[1:], dtype=torch.long, device=logprobs.device)
            chosen = logprobs.gather(1, targets.unsqueeze(1))
            ranks = ((logprobs > chosen).sum(dim=1) + 1).tolist()
            for position, token in enumerate(prompt_ids[1:]):
                entry = self._logprob_entry(logprobs[position], token, top_n)
                entry.rank = ranks[position]
                entries.append(entry)
        return entries

    def _logprob_entry(self, row_logprobs: torch.Tensor, token: int, top_n: int) -> TokenLogprob:
        text, raw = self.token_text.get(token)
        top: list[TopLogprob] = []
        if top_n > 0:
            values, ids = torch.topk(row_logprobs, min(top_n, row_logprobs.shape[0]))
            for value, token_id in zip(values.tolist(), ids.tolist()):
                t_text, t_raw = self.token_text.get(token_id)
                top.append(TopLogprob(token=t_text, token_id=token_id, logprob=value, bytes=t_raw))
        return TokenLogprob(token=text, token_id=token, logprob=float(row_logprobs[token]), bytes=raw, top=top)
