"""Replay pacing: which simulated time to show, and when, as a pure state machine.

Frames are for simulated times on a grid: from, from + step, ... (re-based at the
target of a seek), and ``to`` last. Simulated time runs ``speed`` times faster than the
clock from an anchor (set at start, play, seek and speed changes), so grid time g is
due at anchor_wall + (g - anchor_sim) / speed. A speed change anchors at the simulated
time reached, not at the frame on screen: the part of a step already played counts.
At most one frame per ``min_interval_s`` (the frame budget, 1 / REPLAY_MAX_FPS): when
steps come faster than that, or a frame took long to build, the next frame is the newest
grid time already due, so intermediate steps are coalesced and playback never falls
behind the clock.

The clock is injected (``Clock``): the socket uses ``MonotonicClock``; tests drive a
``ManualClock`` and check pacing against simulated time, with no sleeping.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

MIN_SPEED, MAX_SPEED = 1.0, 3600.0


class Clock(Protocol):
    def now(self) -> float:
        """Seconds, monotonic."""
        ...

    def max_wait(self, seconds: float | None) -> float | None:
        """How long a caller may block (on its socket) waiting for ``seconds`` to pass."""
        ...


class MonotonicClock:
    def now(self) -> float:
        return time.monotonic()

    def max_wait(self, seconds: float | None) -> float | None:
        return seconds


class ManualClock:
    """A clock that moves only when told to; waiters poll it briefly instead of sleeping
    through the simulated wait."""

    def __init__(self, start: float = 1000.0, poll_s: float = 0.005):
        self._t = start
        self._lock = threading.Lock()
        self.poll_s = poll_s

    def now(self) -> float:
        with self._lock:
            return self._t

    def advance(self, seconds: float) -> float:
        with self._lock:
            self._t += seconds
            return self._t

    def max_wait(self, seconds: float | None) -> float | None:
        return None if seconds is None else min(seconds, self.poll_s)


@dataclass
class Playback:
    start_ms: int
    end_ms: int
    step_ms: int
    speed: float
    now: float  # clock time at creation
    min_interval_s: float = 0.0
    paused: bool = False
    ended: bool = False
    position: int = field(init=False)  # simulated time of the frame on screen
    _pending: int | None = field(init=False)  # a frame to show at once (start/seek/view)
    _anchor_wall: float = field(init=False)
    _anchor_sim: float = field(init=False)
    _grid: int = field(init=False)  # frames fall on _grid + k * step_ms (start or seek)
    _last_shown: float = field(init=False)

    def __post_init__(self) -> None:
        if self.end_ms <= self.start_ms:
            raise ValueError("from must be before to")
        if self.step_ms <= 0:
            raise ValueError("step must be positive")
        self.position = self.start_ms
        self._pending = self.start_ms
        self._grid = self.start_ms
        self._anchor(self.now, self.start_ms)
        self._last_shown = float("-inf")

    def _anchor(self, wall: float, sim: float) -> None:
        self._anchor_wall, self._anchor_sim = wall, sim

    def _sim_at(self, wall: float) -> float:
        return self._anchor_sim + (wall - self._anchor_wall) * self.speed * 1000.0

    @property
    def playing(self) -> bool:
        return not self.paused and not self.ended

    def due(self, now: float) -> int | None:
        """The simulated time of the frame to show now, or None."""
        if self._pending is not None:
            return self._pending
        # a microsecond of slack on the budget: float clocks must not miss what they reach
        if not self.playing or now + 1e-6 < self._last_shown + self.min_interval_s:
            return None
        sim = self._sim_at(now)
        if sim + 1e-3 >= self.end_ms:
            return self.end_ms
        # a microsecond of slack: float wall times must not miss a step they reach exactly
        k = int((sim - self._grid + 1e-3) // self.step_ms)
        t = self._grid + k * self.step_ms
        return t if t > self.position else None

    def wait(self, now: float) -> float | None:
        """Seconds until ``due`` may return a frame (None: not until a control message)."""
        if self._pending is not None:
            return 0.0
        if not self.playing:
            return None
        target = min(self.position + self.step_ms, self.end_ms)
        at = self._anchor_wall + (target - self._anchor_sim) / (self.speed * 1000.0)
        return max(0.0, at - now, self._last_shown + self.min_interval_s - now)

    def shown(self, t: int, now: float) -> bool:
        """Record that the frame for ``t`` went out; True when that frame ended the range."""
        self.position = t
        self._pending = None
        self._last_shown = now
        if t >= self.end_ms and not self.ended:
            self.ended = True
            return True
        return False

    def pause(self) -> None:
        self.paused = True

    def play(self, now: float) -> None:
        if self.ended:
            self.seek(self.start_ms, now)
        self.paused = False
        self._anchor(now, self.position)

    def seek(self, t: int, now: float) -> None:
        if not self.start_ms <= t <= self.end_ms:
            raise ValueError("seek t is outside the replay range")
        self.ended = False
        self.position = t
        self._pending = t
        self._grid = t
        self._anchor(now, t)

    def set_speed(self, speed: float, now: float) -> None:
        if not MIN_SPEED <= speed <= MAX_SPEED:
            raise ValueError(f"speed must be between {MIN_SPEED:g} and {MAX_SPEED:g}")
        # playing: simulated time goes on from where it had reached (between frames);
        # paused or ended: from the frame on screen, as play would
        reached = (
            max(self.position, min(self._sim_at(now), self.end_ms))
            if self.playing
            else self.position
        )
        self.speed = speed
        self._anchor(now, reached)

    def refresh(self) -> None:
        """Show the current time again (the view changed)."""
        self._pending = self.position
