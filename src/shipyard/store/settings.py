"""The `store:` section: the database and the data folder."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class StoreConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    url: str | None = Field(None, description="SQLAlchemy URL; env SHIPYARD_DATABASE_URL; default SQLite in "
                                              "data_dir")
    data_dir: str | None = Field(None, description="default: env SHIPYARD_DATA_DIR or ~/.local/share/shipyard")

    def resolved_data_dir(self) -> Path:
        value = self.data_dir or os.environ.get("SHIPYARD_DATA_DIR") or "~/.local/share/shipyard"
        return Path(value).expanduser()


