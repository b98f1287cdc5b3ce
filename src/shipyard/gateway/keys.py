"""API key format and hashing.

A key reads `sy-<public id>-<secret>`. The public id names the database row; only
HMAC-SHA256(pepper, salt || secret) is stored, the salt per key, the pepper outside the database
(`SHIPYARD_KEY_PEPPER`, or a 0600 file in the data folder), so a stolen database alone verifies
nothing. Comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

PREFIX = "sy"
_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


@dataclass(frozen=True)
class ParsedKey:
    public_id: str
    secret: str


def new_public_id() -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(12))


def new_secret() -> str:
    return secrets.token_hex(24)


def format_key(public_id: str, secret: str) -> str:
    return f"{PREFIX}-{public_id}-{secret}"


def parse_key(token: str) -> ParsedKey | None:
    parts = token.split("-")
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2]:
        return None
    return ParsedKey(public_id=parts[1], secret=parts[2])


def hash_secret(pepper: bytes, salt: str, secret: str) -> str:
    return hmac.new(pepper, (salt + secret).encode(), hashlib.sha256).hexdigest()


def new_salt() -> str:
    return secrets.token_hex(16)


def verify(pepper: bytes, salt: str | None, expected_hash: str | None, secret: str) -> bool:
    if not salt or not expected_hash:
        return False
    return hmac.compare_digest(hash_secret(pepper, salt, secret), expected_hash)


def load_pepper(data_dir: Path) -> bytes:
    from_env = os.environ.get("SHIPYARD_KEY_PEPPER")
    if from_env:
        return from_env.encode()
    path = data_dir / "key-pepper"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path.read_text().strip().encode()
