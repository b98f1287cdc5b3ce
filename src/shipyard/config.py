"""`shipyard.yaml`, as pydantic models. Every field has a default: no file is needed.

```yaml
server: {host: 127.0.0.1, port: 8000, log_format: text}
deployments:
  demo:                     # the model name clients send
    engine: transformers
    model: ~/models/qwen2-0.5b
    max_num_seqs: 32
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from shipyard.engines.transformers_engine import TransformersEngineConfig


class TransformersDeployment(TransformersEngineConfig):
    """A model served in-process by the embedded PyTorch engine."""

    model_config = ConfigDict(extra="forbid")
    engine: Literal["transformers"] = "transformers"


# Later engines (vLLM, TGI, llama.cpp, ...) join this union, told apart by `engine`.
Deployment = Annotated[TransformersDeployment, Field(discriminator="engine")]


class ServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    log_format: Literal["text", "json"] = "text"
    log_level: str = "info"
    max_body_bytes: int = Field(2 * 1024 * 1024, ge=1024, description="Larger request bodies get 413")
    retry_after_s: int = Field(1, ge=1, description="Retry-After sent with 503 when the queue is full")


class ShipyardConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    server: ServerConfig = ServerConfig()
    deployments: dict[str, Deployment] = Field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path | None) -> ShipyardConfig:
        if path is None:
            return cls()
        data = yaml.safe_load(Path(path).read_text()) or {}
        return cls.model_validate(data)

    def with_model(self, model_path: str, name: str | None = None) -> ShipyardConfig:
        """Add (or replace) a deployment serving `model_path`, named after its folder by default."""
        name = name or Path(model_path).expanduser().resolve().name
        deployments = dict(self.deployments)
        base = deployments.get(name)
        settings = base.model_dump() if base is not None else {}
        settings["model"] = str(Path(model_path).expanduser())
        deployments[name] = TransformersDeployment.model_validate(settings)
        return self.model_copy(update={"deployments": deployments})
