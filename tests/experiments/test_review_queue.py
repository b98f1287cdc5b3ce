"""Filling the review queue, on a real SQLite store: the random sample queues its share of answers
(within a binomial bound), score rules queue the responses this process holds (one item each,
whatever the number of rules it meets), a response held past `hold_s` is no longer queued, and a
claim not labelled within `claim_ttl_s` lapses to the next reviewer."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import pytest
from sqlalchemy import func, select

from shipyard.hooks import FinishedRequest
from shipyard.engines.base import ChatMessage, GenerationRequest, Prompt, SamplingParams
from experiments_support import Clock, db  # noqa: F401 (db: a fixture)
from shipyard.experiments.review import ReviewConfig, ReviewQueue
from shipyard.experiments.review_items import ReviewError, ReviewItems
from shipyard.store.models import ReviewItem, Score




def _finished(i: int, deployment: str = "chat") -> FinishedRequest:
    prompt = Prompt(messages=[ChatMessage("user", f"question {i}")])
    finished = FinishedRequest(f"req-{i}", "tenant", "key", deployment, 200, None, None, [],
                               output=f"answer {i}", engine_request=GenerationRequest(f"e{i}", prompt, SamplingParams()))
    finished.response_id = f"chatcmpl-{i}"
    return finished


async def _score(db, request_id: str, name: str, **value) -> None:
    async with db.session() as session:
        session.add(Score(request_id=request_id, tenant_id="tenant", deployment="chat", name=name, source="feedback",
                          created_at=datetime.now(timezone.utc), **value))
        await session.commit()


async def _count(db, reason: str | None = None) -> int:
    query = select(func.count()).select_from(ReviewItem)
    if reason:
        query = query.where(ReviewItem.reason == reason)
    async with db.session() as session:
        return (await session.execute(query)).scalar_one()


async def test_the_random_sample_queues_its_share(db):
    queue = ReviewQueue(ReviewConfig(enabled=True, sample=0.25, thumbs_down=False, hallucination=[],
                                     shadow_cosine_below=None), db)
    for i in range(400):
        queue(_finished(i))
    queue(_finished(400, deployment="not-reviewed"))  # every deployment is reviewed by default
    await asyncio.gather(*queue._tasks)
    sampled = await _count(db, "sample")
    assert 60 <= sampled <= 140  # 401 × 0.25 ± 4.5 σ
    async with db.session() as session:
        item = (await session.execute(select(ReviewItem).limit(1))).scalar_one()
    assert item.messages[0]["role"] == "user" and item.answer.startswith("answer ")


async def test_score_rules_queue_held_responses_once_and_forget_them_after_hold_s(db):
    clock = Clock(1000.0)
    config = ReviewConfig(enabled=True, sample=0.0, hold_s=60, deployments=["chat"])
    queue = ReviewQueue(config, db, clock=clock)
    await queue.start()
    try:
        for i in range(4):
            queue(_finished(i))
        queue(_finished(9, deployment="not-reviewed"))
        await _score(db, "req-0", "feedback.thumbs", kind="boolean", boolean=False)
        await _score(db, "req-0", "faithfulness", kind="numeric", numeric=0.1)  # a second rule, the same item
        await _score(db, "req-1", "faithfulness", kind="numeric", numeric=0.9)  # fine: not queued
        await _score(db, "req-2", "shadow.cosine", kind="numeric", numeric=0.3)
        await _score(db, "req-9", "feedback.thumbs", kind="boolean", boolean=False)  # not under review
        await queue.scan()
        assert await _count(db) == 2
        assert await _count(db, "thumbs_down") == 1 and await _count(db, "shadow_disagreement") == 1
        clock.now += 61
        await _score(db, "req-3", "feedback.thumbs", kind="boolean", boolean=False)  # too late: let go
        await queue.scan()
        assert await _count(db) == 2
    finally:
        await queue.stop()


async def test_a_claim_lapses_after_its_ttl(db):
    queue = ReviewQueue(ReviewConfig(enabled=True, sample=1.0), db)
    queue(_finished(1))
    await asyncio.gather(*queue._tasks)
    items = ReviewItems(db, claim_ttl_s=0.3)
    [item] = await items.list(None)
    await items.claim(item.id, None, "alice")
    with pytest.raises(ReviewError) as taken:
        await items.claim(item.id, "tenant", "bob")
    assert taken.value.status == 409
    with pytest.raises(ReviewError):  # another tenant's item: unknown
        await items.claim(item.id, "other-tenant", "bob")
    await asyncio.sleep(0.4)
    claimed = await items.claim(item.id, "tenant", "bob")
    assert claimed.claimed_by == "bob"
    with pytest.raises(ReviewError):  # alice's claim lapsed: she may not label
        await items.release(item.id, None, "alice")


async def test_of_two_reviewers_claiming_at_once_exactly_one_wins(db):
    queue = ReviewQueue(ReviewConfig(enabled=True, sample=1.0), db)
    for i in range(5):
        queue(_finished(i))
    await asyncio.gather(*queue._tasks)
    items = ReviewItems(db)
    for item in await items.list(None):  # both read the item at its version, then both try to move it
        outcomes = await asyncio.gather(items.claim(item.id, None, "alice"), items.claim(item.id, None, "bob"),
                                        return_exceptions=True)
        won = [o for o in outcomes if not isinstance(o, Exception)]
        assert len(won) == 1 and all(isinstance(o, ReviewError) and o.status == 409
                                     for o in outcomes if o not in won)
        assert (await items.get(item.id, None)).claimed_by == won[0].claimed_by


async def test_held_text_is_bounded_in_size_too(db):
    queue = ReviewQueue(ReviewConfig(enabled=True, sample=0.0, max_held_chars=100), db)
    for i in range(20):  # each ~20 characters of prompt and answer
        queue(_finished(i))
    queue(_finished(19))  # a reused id is held once
    assert 0 < queue._held_chars <= 100 and queue._held_chars == sum(
        len(f["answer"]) + len(f["messages"][0]["content"]) for _, f in queue._held.values())
    assert list(queue._held)[-1] == "req-19" and "req-0" not in queue._held
