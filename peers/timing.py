"""One timer for both sides of the peers bench: our benchmark (main venv) and peers/worker.py (.venv-peers).
Standard library only, so either environment can import it."""

from __future__ import annotations

import time
from collections.abc import Callable


def timed(arm: Callable[[], object], repeats: int) -> list[float]:
    """Seconds per call of `arm`, after one untimed warm-up call."""
    arm()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        arm()
        times.append(time.perf_counter() - start)
    return times
