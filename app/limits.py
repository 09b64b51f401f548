"""Abuse limits that need state: sockets open per token (shared by every web process
through Redis) and control messages per second on one socket (a token bucket).

Sockets per token are leases, not a bare counter: each open socket is a member of a
sorted set ``{prefix}:sockets:<token id>`` scored by the time its lease runs out (Redis
server time, so hosts with skewed clocks agree). A keeper thread in each web process
renews the leases of that process's open sockets every ``lease_s / 3``; a process that
crashes stops renewing, and its slots free themselves ``lease_s`` later instead of
leaking forever (which an INCR/DECR counter with a key expiry cannot promise: renewing
the expiry for one live socket would keep a crashed socket's increment alive too).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis

log = logging.getLogger(__name__)

SLOT_LEASE_S = 60.0

# KEYS[1] the token's zset; ARGV: member, lease ms, max sockets.
# Returns the number of sockets now open for the token, or -n when refused (n open).
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local n = redis.call('ZCARD', KEYS[1])
if n >= tonumber(ARGV[3]) then
  return -n
end
redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
redis.call('PEXPIRE', KEYS[1], lease)
return n + 1
"""

# KEYS[1] the token's zset; ARGV: lease ms, members of this process to renew.
# A member that vanished (lease lapsed during a stall, Redis restarted) is added back:
# the socket is open, so it holds a slot.
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], now + lease, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], lease)
return #ARGV - 1
"""


def token_id(claims: dict[str, Any], token: str) -> str:
    """The token's ``jti``, or a hash of the token itself for tokens minted elsewhere."""
    jti = claims.get("jti")
    if isinstance(jti, str) and 0 < len(jti) <= 128:
        return jti
    return hashlib.sha256(token.encode()).hexdigest()[:32]


class TooManySockets(Exception):
    def __init__(self, open_now: int, limit: int):
        super().__init__(f"this token already has {open_now} open sockets (limit {limit})")
        self.open_now = open_now
        self.limit = limit


@dataclass
class Slot:
    key: str
    member: str
    counted: bool  # False when Redis was unreachable at open (the socket went uncounted)


@dataclass
class SocketSlots:
    """Sockets per token across processes. One instance per web process (per app)."""

    client: redis.Redis
    key_prefix: str
    limit: int
    lease_s: float = SLOT_LEASE_S
    _open: dict[str, set[str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _keeper: threading.Thread | None = None

    def key(self, tid: str) -> str:
        return f"{self.key_prefix}sockets:{tid}"

    def acquire(self, tid: str) -> Slot:
        """Take a slot for one socket, or raise TooManySockets.

        Redis down: the socket is let through uncounted (logged). The limit is abuse
        protection, not authentication; refusing every viewer because the counter is
        unreachable would turn a Redis blip into an outage of replay as well."""
        key, member = self.key(tid), uuid.uuid4().hex
        try:
            n = int(self.client.eval(_ACQUIRE, 1, key, member, self._lease_ms(), self.limit))
        except redis.RedisError as exc:
            log.warning("socket limit not enforced, Redis unreachable: %s", exc)
            return Slot(key, member, counted=False)
        if n < 0:
            raise TooManySockets(-n, self.limit)
        with self._lock:
            self._open.setdefault(key, set()).add(member)
            if self._keeper is None or not self._keeper.is_alive():
                self._keeper = threading.Thread(
                    target=self._keep, name="socket-slot-keeper", daemon=True
                )
                self._keeper.start()
        return Slot(key, member, counted=True)

    def release(self, slot: Slot) -> None:
        if not slot.counted:
            return
        with self._lock:
            members = self._open.get(slot.key)
            if members is not None:
                members.discard(slot.member)
                if not members:
                    del self._open[slot.key]
        try:
            self.client.zrem(slot.key, slot.member)
        except redis.RedisError as exc:
            # the lease runs out by itself once nobody renews it
            log.warning("socket slot not released (expires in %.0fs): %s", self.lease_s, exc)

    def open_count(self, tid: str) -> int:
        """Live sockets of a token, across processes (expired leases not counted)."""
        now_s, now_us = self.client.time()
        now_ms = int(now_s) * 1000 + int(now_us) // 1000
        return int(self.client.zcount(self.key(tid), f"({now_ms}", "+inf"))

    def _lease_ms(self) -> int:
        return max(1, int(self.lease_s * 1000))

    def _keep(self) -> None:
        """Renew this process's leases; exits once it holds none (restarted on demand)."""
        while True:
            time.sleep(self.lease_s / 3)
            with self._lock:
                snapshot = {k: list(v) for k, v in self._open.items() if v}
                if not snapshot:
                    self._keeper = None
                    return
            try:
                pipe = self.client.pipeline(transaction=False)
                for key, members in snapshot.items():
                    pipe.eval(_RENEW, 1, key, self._lease_ms(), *members)
                pipe.execute()
            except redis.RedisError as exc:
                log.warning("socket slot leases not renewed: %s", exc)


class TokenBucket:
    """At most ``rate`` events per second on average, bursts of ``max(rate, 1)``."""

    def __init__(self, rate: float, clock: Any = time.monotonic):
        self.rate = rate
        self.capacity = max(rate, 1.0)
        self._clock = clock
        self._allowance = self.capacity
        self._last = clock()

    def allow(self) -> bool:
        now = self._clock()
        self._allowance = min(self.capacity, self._allowance + (now - self._last) * self.rate)
        self._last = now
        if self._allowance < 1:
            return False
        self._allowance -= 1
        return True
