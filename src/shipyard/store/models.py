"""Tables: tenants, API keys (hashed secrets only), usage records and evaluation scores."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    rpm: Mapped[int | None] = mapped_column(Integer)
    tpm: Mapped[int | None] = mapped_column(Integer)
    max_concurrent: Mapped[int | None] = mapped_column(Integer)
    budget_usd: Mapped[float | None] = mapped_column(Float)
    budget_period: Mapped[str | None] = mapped_column(String(16))  # day | month
    # Keys a tenant-admin creates may not be of a higher tier (admission priority) than this.
    max_tier: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the public id in sy-<id>-<secret>
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    role: Mapped[str] = mapped_column(String(32))
    # HMAC-SHA256(pepper, salt || secret); the plaintext secret is never stored.
    secret_salt: Mapped[str] = mapped_column(String(64))
    secret_hash: Mapped[str] = mapped_column(String(128))
    previous_salt: Mapped[str | None] = mapped_column(String(64))
    previous_hash: Mapped[str | None] = mapped_column(String(128))
    previous_valid_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    allowed_models: Mapped[list | None] = mapped_column(JSON)
    tier: Mapped[int] = mapped_column(Integer, default=0)
    rpm: Mapped[int | None] = mapped_column(Integer)
    tpm: Mapped[int | None] = mapped_column(Integer)
    max_concurrent: Mapped[int | None] = mapped_column(Integer)
    budget_usd: Mapped[float | None] = mapped_column(Float)
    budget_period: Mapped[str | None] = mapped_column(String(16))
    rotation_period_days: Mapped[int | None] = mapped_column(Integer)
    rotation_grace_s: Mapped[float | None] = mapped_column(Float)  # policy default for rotate()
    generation: Mapped[int] = mapped_column(Integer, default=0)  # bumped by rotate/revoke: caches compare it
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    rotated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    # Updates carry `WHERE generation = <the value read>`: of two racing rotations one wins and the
    # other fails (StaleDataError → 409) instead of both "succeeding" with one working secret.
    __mapper_args__ = {"version_id_col": generation, "version_id_generator": False}


class UsageRecord(Base):
    __tablename__ = "usage_records"
    __table_args__ = (Index("ix_usage_tenant_time", "tenant_id", "created_at"),
                      Index("ix_usage_tenant_user_time", "tenant_id", "user", "created_at"),
                      Index("ix_usage_response_id", "response_id"),
                      Index("ix_usage_tenant_episode", "tenant_id", "episode"))

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(160), unique=True)  # replays are idempotent
    tenant_id: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str] = mapped_column(String(64), index=True)
    model: Mapped[str] = mapped_column(String(200))
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cached_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cache: Mapped[str | None] = mapped_column(String(16))  # hit, semantic, miss or bypass
    user: Mapped[str | None] = mapped_column(String(256))  # the request's `user` field
    response_id: Mapped[str | None] = mapped_column(String(80))  # chatcmpl-… / cmpl-…: feedback names it
    variant: Mapped[str | None] = mapped_column(String(200))  # "<experiment>/<arm>" when an experiment assigned it
    episode: Mapped[str | None] = mapped_column(String(200))  # the x-shipyard-episode-id header
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    status: Mapped[int] = mapped_column(Integer)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class Score(Base):
    """One evaluation of one request: a monitor's metric, an eval run, a human label, user feedback."""

    __tablename__ = "scores"
    __table_args__ = (Index("ix_scores_tenant_deployment_name_time", "tenant_id", "deployment", "name", "created_at"),
                      Index("uq_scores_vote", "request_id", "name", "voter", unique=True))

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(160), index=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    deployment: Mapped[str] = mapped_column(String(200))
    name: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(16))  # numeric | categorical | boolean
    numeric: Mapped[float | None] = mapped_column(Float)
    label: Mapped[str | None] = mapped_column(String(200))
    boolean: Mapped[bool | None] = mapped_column(Boolean)
    source: Mapped[str] = mapped_column(String(16))  # monitor | eval | annotation | api | feedback
    comment: Mapped[str | None] = mapped_column(Text)
    tags: Mapped[list | None] = mapped_column(JSON)  # feedback's tags
    voter: Mapped[str | None] = mapped_column(String(64))  # feedback: the key that sent it (one vote each)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class AlertEventRow(Base):
    """The alert history: every firing and resolved notification, with its delivery outcome."""

    __tablename__ = "alert_events"
    __table_args__ = (Index("ix_alert_events_tenant_time", "tenant_id", "created_at"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    fingerprint: Mapped[str] = mapped_column(String(32), index=True)
    alertname: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))  # firing | resolved
    severity: Mapped[str] = mapped_column(String(16))  # warning | critical | page | ticket
    deployment: Mapped[str | None] = mapped_column(String(200))
    tenant_id: Mapped[str | None] = mapped_column(String(64))  # tenant series only; None: global
    labels: Mapped[dict] = mapped_column(JSON)
    annotations: Mapped[dict] = mapped_column(JSON)
    value: Mapped[float | None] = mapped_column(Float)
    starts_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ends_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    delivered: Mapped[bool | None] = mapped_column(Boolean)  # None: no webhook, or not yet tried
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AlertRuleRow(Base):
    """Alert rules added through the admin API (those in shipyard.yaml are not stored)."""

    __tablename__ = "alert_rules"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    body: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ExperimentRow(Base):
    """An experiment created through the admin API (those in shipyard.yaml are not stored)."""

    __tablename__ = "experiments"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    spec: Mapped[dict] = mapped_column(JSON)
    version: Mapped[int] = mapped_column(Integer)  # every change +1: racing admin calls cannot both win
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ExperimentEvent(Base):
    """The audit log: every transition of every experiment, once (unique per version)."""

    __tablename__ = "experiment_events"
    __table_args__ = (UniqueConstraint("experiment", "version", name="uq_experiment_events_version"),
                      Index("ix_experiment_events_experiment", "experiment", "created_at"))

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    experiment: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    version: Mapped[int] = mapped_column(Integer)
    actor: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ShadowRecord(Base):
    """One copy a shadow experiment sent: its own table, so no tenant is ever billed or limited for it."""

    __tablename__ = "shadow_records"
    __table_args__ = (Index("ix_shadow_records_experiment_time", "experiment", "created_at"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    experiment: Mapped[str] = mapped_column(String(64))
    arm: Mapped[str] = mapped_column(String(64))
    deployment: Mapped[str] = mapped_column(String(200))
    request_id: Mapped[str] = mapped_column(String(160))  # the primary request's usage id
    tenant_id: Mapped[str] = mapped_column(String(64))
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    latency_ms: Mapped[float] = mapped_column(Float)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    status: Mapped[int] = mapped_column(Integer)
    cost_usd: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ReviewItem(Base):
    """A response queued for a human: its prompt and answer (kept only for queued items), why it was
    queued, who claimed it and the labels it got (they also become annotation scores)."""

    __tablename__ = "review_items"
    __table_args__ = (UniqueConstraint("request_id", name="uq_review_items_request"),
                      Index("ix_review_items_tenant_status", "tenant_id", "status", "id"))

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(160))  # the usage id
    response_id: Mapped[str | None] = mapped_column(String(80))
    tenant_id: Mapped[str] = mapped_column(String(64))
    deployment: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(String(64))  # sample | thumbs_down | low_score:<name> | shadow_disagreement
    messages: Mapped[list] = mapped_column(JSON)  # the prompt as chat messages ({"role", "content"})
    answer: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))  # pending | claimed | labelled | skipped
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    labels: Mapped[dict | None] = mapped_column(JSON)
    correction: Mapped[str | None] = mapped_column(Text)  # the answer the reviewer would have wanted
    labelled_by: Mapped[str | None] = mapped_column(String(64))
    labelled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    version: Mapped[int] = mapped_column(Integer)  # every change +1: two reviewers cannot both claim
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class TriggerEvaluation(Base):
    """The retraining triggers' audit: every evaluation (fired or suppressed, and why) and every
    action's outcome. Append-only: the database refuses updates and deletes (migration 0009). One
    evaluation per trigger and slot, so of several processes exactly one evaluates each."""

    __tablename__ = "trigger_evaluations"
    __table_args__ = (UniqueConstraint("trigger", "slot", "kind", name="uq_trigger_evaluations_slot"),
                      Index("ix_trigger_evaluations_trigger", "trigger", "id"))

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    trigger: Mapped[str] = mapped_column(String(64))
    slot: Mapped[int] = mapped_column(BigInteger)  # evaluation time ÷ the interval
    kind: Mapped[str] = mapped_column(String(16))  # evaluation | action
    condition: Mapped[bool | None] = mapped_column(Boolean)  # this evaluation's raw condition (None: no data)
    met: Mapped[bool | None] = mapped_column(Boolean)  # M of the last N conditions held
    observed: Mapped[float | None] = mapped_column(Float)
    outcome: Mapped[str] = mapped_column(String(16))  # fired | suppressed | delivered | failed
    reason: Mapped[str] = mapped_column(Text)
    detail: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class RevokedSession(Base):
    """A dashboard session ended by sign-out: refused until it would have expired anyway."""

    __tablename__ = "revoked_sessions"

    session_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
