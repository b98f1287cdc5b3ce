"""What the server knows of one request as it travels: filled in by the layers it passes, logged
once at the end."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field


@dataclass
class RequestRecord:
    """Filled in by the handlers as the request travels; logged at the end."""

    request_id: str
    method: str
    path: str
    arrival: float = field(default_factory=time.monotonic)
    model: str | None = None
    tenant_id: str | None = None
    key_id: str | None = None
    stream: bool | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    ttft_ms: float | None = None
    finish_reason: str | None = None
    served_by: str | None = None  # routed requests: the replica, or the fallback that answered
    cache: str | None = None  # what the caches did: hit, semantic, miss or bypass
    cache_similarity: float | None = None  # a semantic hit's cosine similarity
    cache_header: str | None = None  # the client's Cache-Control header
    user: str | None = None  # the body's `user` field: the caller's end user
    evaluate: str | None = None  # the x-shipyard-evaluate header (honoured for admins only)
    reference_context: str | None = None  # the body's `reference_context` (faithfulness)
    episode: str | None = None  # the x-shipyard-episode-id header (sticky experiment assignment, feedback)
    deployment: str | None = None  # the deployment that serves it (an experiment's arm, else the model)
    variant: str | None = None  # "<experiment>/<arm>" when an experiment assigned it
    variant_header: str | None = None  # x-shipyard-variant: the deployment, with the experiment and arm
    response_id: str | None = None  # chatcmpl-… / cmpl-…
    mirror: str | None = None  # the deployment a shadow copy goes to, once this is answered
    mirror_arm: str | None = None
    error_type: str | None = None
    status: int = 0
    metered: bool = False  # a usage row was written for it (admitted, or refused by the gateway)
    client_supplied_id: bool = False
    rate_limit_headers: dict[str, str] = field(default_factory=dict)

    @property
    def usage_id(self) -> str:
        """Unique per request even when clients reuse their x-request-id."""
        return f"{self.request_id}/{uuid.uuid4().hex[:8]}" if self.client_supplied_id else self.request_id
