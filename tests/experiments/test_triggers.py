"""Retraining triggers on a real SQLite store, on an injected clock: a trigger fires once per
condition, honours M-of-N and its cooldown, audits every suppressed evaluation (the table is
append-only: tests/test_store.py), signs its webhook (the receiver verifies it) and keeps one
idempotency key across retries; of two processes evaluating at once, exactly one acts; a command
action is killed past its timeout; schedules, drift and feedback counts are conditions too."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import datetime, timezone

import pytest
from sqlalchemy import select

from shipyard.experiments.trigger_spec import RetrainingConfig
from shipyard.experiments.triggers import RetrainingTriggers
from shipyard.monitor.notify import verify
from shipyard.store.models import Score, TriggerEvaluation
from experiments_support import Clock, db  # noqa: F401 (db: a fixture)
from webhook_receiver import WebhookReceiver

SECRET = "retrain-secret-0123456789"




def _config(trigger: dict, interval_s: float = 60.0) -> RetrainingConfig:
    return RetrainingConfig.model_validate({"interval_s": interval_s, "triggers": [trigger],
                                            "external_url": "http://127.0.0.1:9"})


def _webhook(url: str, **settings) -> dict:
    return {"webhook": {"url": url, "secret": SECRET, "backoff_s": 0.05, "timeout_s": 5, **settings}}


async def _thumbs(db, clock: Clock, ups: int, downs: int, deployment: str = "chat") -> None:
    at = datetime.fromtimestamp(clock(), timezone.utc)
    async with db.session() as session:
        session.add_all([Score(request_id=f"r{i}-{clock()}", tenant_id="t", deployment=deployment,
                               name="feedback.thumbs", kind="boolean", boolean=i < ups, source="feedback",
                               created_at=at) for i in range(ups + downs)])
        await session.commit()


async def _step(triggers: RetrainingTriggers, clock: Clock, seconds: float = 60.0):
    clock.now += seconds
    row = await triggers.evaluate(triggers.config.triggers[0])
    await asyncio.gather(*triggers._actions)  # the action runs beside the loop; wait for it here
    return row


async def test_a_metric_trigger_fires_once_per_condition_with_m_of_n_and_cooldown(db):
    clock = Clock()
    with WebhookReceiver() as receiver:
        config = _config({"name": "thumbs-low", "metric": {"score": "feedback.thumbs", "deployment": "chat",
                                                           "below": 0.5, "window_s": 30, "min_samples": 5},
                          "debounce": {"m": 2, "n": 3}, "cooldown_s": 600, "action": _webhook(receiver.url)})
        triggers = RetrainingTriggers(config, db, clock=clock)

        async def at_step(ups: int, downs: int):
            clock.now += 60
            await _thumbs(db, clock, ups, downs)
            return await _step(triggers, clock, 0)

        assert (await at_step(1, 1)).reason.startswith("no data: 2 scores in the window")
        assert (await at_step(9, 1)).reason == "condition not met"
        debounced = await at_step(1, 9)
        assert debounced.outcome == "suppressed" and debounced.reason.startswith("debounce: held in 1 of the last 3")
        fired = await at_step(2, 8)
        assert fired.outcome == "fired" and len(receiver.accepted) == 1
        assert (await at_step(0, 10)).reason == "fired already for this condition; waiting for it to clear"
        assert (await at_step(10, 0)).met is True  # 2 of the last 3 still held
        assert (await at_step(10, 0)).met is False  # cleared: the trigger re-arms
        await at_step(0, 10)
        in_cooldown = await at_step(0, 10)
        assert in_cooldown.met and in_cooldown.reason.startswith("cooldown until")
        clock.now += 300
        assert (await at_step(0, 10)).outcome == "fired"
        assert len(receiver.accepted) == 2

        headers, body = receiver.accepted[0]
        assert verify(SECRET.encode(), headers["x-shipyard-signature"], body)
        assert not verify(b"another-secret-000000", headers["x-shipyard-signature"], body)
        payload = json.loads(body)
        assert payload["trigger"] == "thumbs-low" and payload["kind"] == "metric"
        assert payload["observed"] == pytest.approx(0.2) and payload["threshold"] == 0.5
        assert headers["idempotency-key"] == payload["idempotency_key"]
        assert "feedback.thumbs" in payload["data"]["scores"] and "deployment=chat" in payload["data"]["scores"]

    audit = await triggers.history("thumbs-low", limit=100)
    evaluations = [r for r in audit if r["kind"] == "evaluation"]
    assert len(evaluations) == 10 and sum(r["outcome"] == "fired" for r in evaluations) == 2
    assert [r["outcome"] for r in audit if r["kind"] == "action"] == ["delivered", "delivered"]


def _thumbs_down_trigger(name: str, url: str, max_attempts: int) -> RetrainingConfig:
    """Fires at the first evaluation over ten thumbs-down."""
    return _config({"name": name, "metric": {"score": "feedback.thumbs", "below": 0.5, "window_s": 600,
                                             "min_samples": 5},
                    "cooldown_s": 0, "action": _webhook(url, max_attempts=max_attempts)})


async def test_a_retried_webhook_keeps_its_idempotency_key_and_one_of_two_processes_acts(db):
    clock = Clock()
    await _thumbs(db, clock, 0, 10)
    with WebhookReceiver(fail_first=2) as receiver:
        config = _thumbs_down_trigger("retry", receiver.url, max_attempts=4)
        one, two = RetrainingTriggers(config, db, clock=clock), RetrainingTriggers(config, db, clock=clock)
        clock.now += 1
        rows = await asyncio.gather(one.evaluate(config.triggers[0]), two.evaluate(config.triggers[0]))
        await asyncio.gather(*one._actions, *two._actions)
        assert sorted(r is None for r in rows) == [False, True]  # the slot went to exactly one of them
        assert receiver.refused == 2 and len(receiver.accepted) == 1
        key = receiver.accepted[0][0]["idempotency-key"]
        assert [h["idempotency-key"] for h in receiver.refused_headers] == [key, key]
    async with db.session() as session:
        action = (await session.execute(select(TriggerEvaluation).where(TriggerEvaluation.kind == "action"))).scalar_one()
    assert action.outcome == "delivered" and action.detail["attempts"] == 3 and action.detail["idempotency_key"] == key


async def test_a_webhook_that_never_answers_well_is_audited_as_failed(db):
    clock = Clock()
    await _thumbs(db, clock, 0, 10)
    with WebhookReceiver(fail_first=10) as receiver:
        config = _thumbs_down_trigger("down", receiver.url, max_attempts=2)
        triggers = RetrainingTriggers(config, db, clock=clock)
        assert (await _step(triggers, clock, 1)).outcome == "fired"
    actions = [r for r in await triggers.history("down") if r["kind"] == "action"]
    assert actions[0]["outcome"] == "failed" and actions[0]["detail"]["http_status"] == 503


async def test_a_command_action_gets_the_payload_and_is_killed_past_its_timeout(db, tmp_path):
    clock = Clock()
    out = tmp_path / "payload.json"
    save = f"import sys, pathlib; pathlib.Path({str(out)!r}).write_text(sys.stdin.read())"
    spec = {"feedback_count": {"at_least": 3}, "cooldown_s": 0}
    config = RetrainingConfig.model_validate({"interval_s": 60, "triggers": [
        {"name": "save", **spec, "action": {"command": {"argv": [sys.executable, "-c", save], "timeout_s": 30}}},
        {"name": "hang", **spec, "action": {"command": {"argv": [sys.executable, "-c", "import time; time.sleep(60)"],
                                                        "timeout_s": 0.5}}}]})
    triggers = RetrainingTriggers(config, db, clock=clock)
    await _thumbs(db, clock, 1, 2)
    clock.now += 1
    await triggers.evaluate_all()
    await asyncio.wait_for(asyncio.gather(*triggers._actions), 20)
    payload = json.loads(out.read_text())
    assert payload["trigger"] == "save" and payload["observed"] == 3 and payload["kind"] == "feedback_count"
    [saved] = [r for r in await triggers.history("save") if r["kind"] == "action"]
    [hung] = [r for r in await triggers.history("hang") if r["kind"] == "action"]
    assert saved["outcome"] == "delivered" and saved["detail"]["exit_code"] == 0
    assert hung["outcome"] == "failed" and hung["detail"]["error"] == "timed out after 0.5 s"
    clock.now += 60  # feedback counts from the last firing: nothing new, nothing fires
    await triggers.evaluate_all()
    latest = (await triggers.history("save", limit=1))[0]
    assert latest["outcome"] == "suppressed" and latest["observed"] == 0


async def test_schedule_and_drift_conditions(db):
    clock = Clock()
    with WebhookReceiver() as receiver:
        config = _config({"name": "nightly", "schedule": {"cron": "*/5 * * * *"}, "cooldown_s": 0,
                          "action": _webhook(receiver.url)})
        triggers = RetrainingTriggers(config, db, clock=clock)
        assert (await _step(triggers, clock, 60)).condition is False  # the first due time is 5 minutes on
        assert (await _step(triggers, clock, 240)).outcome == "fired"
        assert (await _step(triggers, clock, 60)).condition is False  # due again 5 minutes after the firing
        assert (await _step(triggers, clock, 240)).outcome == "fired"
        assert len(receiver.accepted) == 2

        reports = {"chat": None}
        drift = RetrainingTriggers(_config({"name": "drift", "drift": {"deployment": "chat", "above": 0.3},
                                            "action": _webhook(receiver.url)}), db, drift_of=reports.get, clock=clock)
        assert (await _step(drift, clock)).reason == "no data: no drift report yet"
        reports["chat"] = {"drift_share": 0.5, "drift_detected": True}
        fired = await _step(drift, clock)
        assert fired.outcome == "fired" and fired.observed == 0.5
        assert json.loads(receiver.accepted[-1][1])["data"]["drift"].endswith("/admin/drift")


def test_trigger_settings_are_checked():
    bad = [{"name": "x", "action": {"command": {"argv": ["true"]}}},  # no condition
           {"name": "x", "schedule": {"cron": "every day"}, "action": {"command": {"argv": ["true"]}}},
           {"name": "x", "metric": {"score": "s", "below": 1, "above": 0}, "action": {"command": {"argv": ["true"]}}},
           {"name": "x", "feedback_count": {"at_least": 1}, "debounce": {"m": 3, "n": 2},
            "action": {"command": {"argv": ["true"]}}},
           {"name": "x", "feedback_count": {"at_least": 1}, "action": {"webhook": {"url": "http://127.0.0.1:1/h"}}}]
    for trigger in bad:
        with pytest.raises(ValueError):
            RetrainingConfig.model_validate({"triggers": [trigger]})
