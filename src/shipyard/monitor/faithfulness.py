"""Faithfulness: does the answer keep to the reference context its request carried
(`reference_context`)? Scored by a local sequence-classification model the operator configures —
an NLI model (the probability of its 'entailment' label, with the context as premise and the answer
as hypothesis) or a one-logit cross-encoder (its sigmoid). No model ships for this; without one
the score is simply not computed. Runs off the request path, one request at a time."""

from __future__ import annotations

import asyncio
import logging
import threading

from shipyard.aio import cancel_and_wait
from shipyard.monitor.scores import ScoreWriter
from shipyard.monitor.settings import FaithfulnessConfig

log = logging.getLogger("shipyard.monitor")


class FaithfulnessModel:
    def __init__(self, path: str, max_length: int = 512):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True).eval()
        self.max_length = max_length
        labels = {int(i): str(name).lower() for i, name in self.model.config.id2label.items()}
        self.entailment = next((i for i, name in labels.items() if "entail" in name), None)
        if self.model.config.num_labels > 1 and self.entailment is None:
            raise ValueError(f"{path}: an NLI model needs an 'entailment' label (it has {sorted(labels.values())})")
        self._lock = threading.Lock()

    def __call__(self, context: str, answer: str) -> float:
        torch = self.torch
        inputs = self.tokenizer(context, answer, truncation="only_first", max_length=self.max_length,
                                return_tensors="pt")
        with self._lock, torch.inference_mode():
            logits = self.model(**inputs).logits[0].float()
        if logits.numel() == 1:
            return float(torch.sigmoid(logits[0]))
        return float(torch.softmax(logits, dim=-1)[self.entailment])


class FaithfulnessMonitor:
    def __init__(self, settings: FaithfulnessConfig, writer: ScoreWriter):
        self.settings = settings
        self.writer = writer
        self._model: FaithfulnessModel | None = None
        self._queue: asyncio.Queue = asyncio.Queue(maxsize=1000)
        self._task: asyncio.Task | None = None
        self.dropped = 0

    def __call__(self, finished) -> None:
        if finished.status != 200 or not finished.reference_context or not finished.output:
            return
        if self.settings.deployments and finished.deployment not in self.settings.deployments:
            return
        try:
            self._queue.put_nowait(finished)
        except asyncio.QueueFull:
            self.dropped += 1

    def model(self) -> FaithfulnessModel:
        if self._model is None:
            self._model = FaithfulnessModel(self.settings.model_path, self.settings.max_length)
        return self._model

    async def start(self) -> None:
        await asyncio.to_thread(self.model)  # a bad folder is found at start, not on a request
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def _run(self) -> None:
        while True:
            finished = await self._queue.get()
            try:
                value = await asyncio.to_thread(self.model(), finished.reference_context, finished.output)
            except Exception as exc:
                log.warning("faithfulness of %s not scored: %s", finished.request_id, exc)
                continue
            self.writer.record(finished.request_id, finished.tenant_id, finished.deployment, {"faithfulness": value})
