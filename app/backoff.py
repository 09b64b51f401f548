"""Waiting out a downstream outage: exponential backoff with jitter that a stop flag cuts
short, so a worker retrying a dead server still exits promptly on SIGTERM."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field


@dataclass
class Backoff:
    stop: threading.Event
    first_s: float = 0.1
    cap_s: float = 5.0
    attempts: int = 0
    _rng: random.Random = field(default_factory=random.Random)

    def next_delay(self) -> float:
        # full jitter: many workers retrying one server do not hammer it in step
        ceiling = min(self.cap_s, self.first_s * 2**self.attempts)
        self.attempts += 1
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    def wait(self) -> bool:
        """Sleep the next delay; False if the stop flag was set (give up now)."""
        return not self.stop.wait(self.next_delay())

    def reset(self) -> None:
        self.attempts = 0
