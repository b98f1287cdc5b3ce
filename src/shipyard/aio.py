"""Small asyncio helpers shared by the background workers."""

from __future__ import annotations

import asyncio
import contextlib


async def cancel_and_wait(task: asyncio.Task | None) -> None:
    """Stop a background task and wait until it has (its CancelledError is expected, not an error)."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def every(interval_s: float, step, what: str, logger) -> None:
    """Await `step()` every `interval_s` until cancelled; a failed step is logged, and the next runs."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await step()
        except Exception as exc:
            logger.warning("%s failed: %s", what, exc, exc_info=not isinstance(exc, OSError))
