"""Live heat in Redis: the SPEC heat value, maintained incrementally by one Lua script.

Keys (all share the hash tag ``{prefix}`` so a script may touch them in Redis Cluster):
  {p}:drv        hash   driver -> "<ts_ms>:<geohash8>"   latest ping per active driver
  {p}:seen       zset   driver scored by that ts          to expire quiet drivers
  {p}:c:1..8     hash   cell -> distinct drivers there    one hash per precision
  {p}:pos        hash   driver -> "lat,lon,heading,speed" latest position (markers)
  {p}:m:<gh6>    set    drivers whose latest ping is in that geohash-6 cell (markers)
  {p}:cutoff     string the newest window start applied   (monotonic)
  {p}:changed    pub/sub channel: a batch changed counts

A driver counts once, in the cell of its most recent ping (by ts, ties broken by the
larger geohash — the replay SQL orders the same way) whose ts is in (now - W, now].
Coarser precisions are maintained, not derived, so a frame costs one HGETALL of a hash
holding only non-zero cells. Moving within a precision-8 cell touches no counter.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import redis

from app.ping import Ping, geohash8
from app.settings import Settings

PRECISIONS = range(1, 9)
# (driver_id, geohash-8 cell, lat, lon, heading or None)
MarkerCandidate = tuple[str, str, float, float, float | None]

_LUA = """
local cutoff = tonumber(ARGV[1])
local want = tonumber(ARGV[2])
local stored = tonumber(redis.call('GET', KEYS[3]) or '-1')
if stored >= cutoff then
  cutoff = stored
else
  redis.call('SET', KEYS[3], ARGV[1])
end

local function dec(p, cell)
  if redis.call('HINCRBY', KEYS[4 + p], cell, -1) <= 0 then
    redis.call('HDEL', KEYS[4 + p], cell)
  end
end

-- drivers per geohash-6 cell, for markers at street zoom ({p}:m:<gh6>, same hash tag)
local mprefix = string.sub(KEYS[1], 1, -4) .. 'm:'

local changed = 0
local updated = 0
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', cutoff)
for _, d in ipairs(gone) do
  local v = redis.call('HGET', KEYS[1], d)
  if v then
    local gh = string.sub(v, string.find(v, ':', 1, true) + 1)
    for p = 1, 8 do dec(p, string.sub(gh, 1, p)) end
    redis.call('SREM', mprefix .. string.sub(gh, 1, 6), d)
    redis.call('HDEL', KEYS[1], d)
    redis.call('HDEL', KEYS[4], d)
    changed = changed + 1
  end
end
if #gone > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', cutoff) end

for i = 3, #ARGV, 4 do
  local d, ts_s, gh = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local ts = tonumber(ts_s)
  if ts > cutoff then
    local v = redis.call('HGET', KEYS[1], d)
    local old_ts, old_gh = nil, nil
    if v then
      local c = string.find(v, ':', 1, true)
      old_ts = tonumber(string.sub(v, 1, c - 1))
      old_gh = string.sub(v, c + 1)
    end
    if (not old_ts) or ts > old_ts or (ts == old_ts and gh > old_gh) then
      updated = updated + 1
      redis.call('HSET', KEYS[1], d, ts_s .. ':' .. gh)
      redis.call('ZADD', KEYS[2], ts_s, d)
      redis.call('HSET', KEYS[4], d, ARGV[i + 3])
      if old_gh ~= gh then
        local new6 = string.sub(gh, 1, 6)
        if not old_gh or string.sub(old_gh, 1, 6) ~= new6 then
          if old_gh then redis.call('SREM', mprefix .. string.sub(old_gh, 1, 6), d) end
          redis.call('SADD', mprefix .. new6, d)
        end
        for p = 1, 8 do
          local b = string.sub(gh, 1, p)
          local a = old_gh and string.sub(old_gh, 1, p)
          if a ~= b then
            if a then dec(p, a) end
            redis.call('HINCRBY', KEYS[4 + p], b, 1)
          end
        end
        changed = changed + 1
      end
    end
  end
end

local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
local oldest_ts = oldest[2] or ''
if want > 0 then
  return {changed, redis.call('HGETALL', KEYS[4 + want]), oldest_ts, updated}
end
return {changed, {}, oldest_ts, updated}
"""


@dataclass(frozen=True)
class LiveKeys:
    drv: str
    seen: str
    cutoff: str
    pos: str
    counts: tuple[str, ...]
    changed_channel: str

    @classmethod
    def for_settings(cls, settings: Settings) -> LiveKeys:
        p = settings.redis_key_prefix
        return cls(
            drv=p + "drv",
            seen=p + "seen",
            cutoff=p + "cutoff",
            pos=p + "pos",
            counts=tuple(f"{p}c:{n}" for n in PRECISIONS),
            changed_channel=p + "changed",
        )

    def script_keys(self) -> list[str]:
        return [self.drv, self.seen, self.cutoff, self.pos, *self.counts]

    def all_keys(self) -> list[str]:
        return self.script_keys()


def latest_per_driver(pings: Iterable[Ping]) -> dict[str, tuple[int, str, Ping]]:
    """Keep each driver's most recent ping of a batch (ts, then geohash as tie-break):
    the script would discard the others anyway, so they never cross the wire."""
    best: dict[str, tuple[int, str, Ping]] = {}
    for ping in pings:
        current = best.get(ping.driver_id)
        if current is not None and ping.ts < current[0]:
            continue
        gh = geohash8(ping.lat, ping.lon)
        if current is None or ping.ts > current[0] or gh > current[1]:
            best[ping.driver_id] = (ping.ts, gh, ping)
    return best


def _position(ping: Ping) -> str:
    heading = "" if ping.heading is None else f"{ping.heading:g}"
    speed = "" if ping.speed_kmh is None else f"{ping.speed_kmh:g}"
    return f"{ping.lat:.6f},{ping.lon:.6f},{heading},{speed}"


class LiveCounts:
    """The live heat state of one Redis prefix."""

    def __init__(self, client: redis.Redis, settings: Settings):
        self.redis = client
        self.settings = settings
        self.keys = LiveKeys.for_settings(settings)
        self._script = client.register_script(_LUA)

    def _run(
        self, now_ms: int, want: int, args: list[str | int]
    ) -> tuple[int, dict[str, int], int | None, int]:
        cutoff = now_ms - self.settings.live_window_ms
        changed, flat, oldest, updated = self._script(
            keys=self.keys.script_keys(), args=[cutoff, want, *args]
        )
        cells = {_text(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}
        # when the oldest live driver drops out of the window, counts change by themselves
        expiry = int(float(_text(oldest))) + self.settings.live_window_ms if oldest else None
        return int(changed), cells, expiry, int(updated)

    def apply(self, pings: Iterable[Ping], now_ms: int) -> int:
        """Apply a batch in one script call; returns how many drivers changed cell
        (including those expired). Pings older than the window are ignored."""
        args: list[str | int] = []
        for driver, (ts, gh, ping) in latest_per_driver(pings).items():
            args += [driver, ts, gh, _position(ping)]
        changed, _, _, updated = self._run(now_ms, 0, args)
        if changed or updated:
            # a driver moving inside its cell changes no count but does move its marker
            self.redis.publish(self.keys.changed_channel, str(now_ms))
        return changed

    def cells(self, precision: int, now_ms: int) -> dict[str, int]:
        """Counts at ``precision`` for time now_ms (expires drivers first, atomically)."""
        return self.snapshot(precision, now_ms)[0]

    def snapshot(self, precision: int, now_ms: int) -> tuple[dict[str, int], int | None]:
        """Counts at ``precision`` for now_ms, and the time (ms) at which they will next
        change by themselves (the oldest active driver leaving the window), if any."""
        if precision not in PRECISIONS:
            raise ValueError("precision must be 1..8")
        _, cells, next_expiry, _ = self._run(now_ms, precision, [])
        return cells, next_expiry

    def marker_candidates(self, cells6: Iterable[str]) -> list[MarkerCandidate]:
        """Active drivers in the given geohash-6 cells with their position: two round
        trips (the cells' driver sets, then the drivers' cells and positions)."""
        names = sorted(set(cells6))
        if not names:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for cell in names:
            pipe.smembers(f"{self.settings.redis_key_prefix}m:{cell}")
        drivers = sorted({_text(d) for members in pipe.execute() for d in members})
        if not drivers:
            return []
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(self.keys.drv, drivers)
        pipe.hmget(self.keys.pos, drivers)
        latest, positions = pipe.execute()
        out: list[MarkerCandidate] = []
        for driver, last, pos in zip(drivers, latest, positions, strict=True):
            if last is None or pos is None:
                continue  # expired between the two reads
            cell8 = _text(last).split(":", 1)[1]
            lat, lon, heading, _speed = _text(pos).split(",")
            out.append((driver, cell8, float(lat), float(lon), float(heading) if heading else None))
        return out

    def positions(self, drivers: Iterable[str]) -> dict[str, str]:
        names = list(drivers)
        if not names:
            return {}
        values = self.redis.hmget(self.keys.pos, names)
        return {d: _text(v) for d, v in zip(names, values, strict=True) if v is not None}

    def wipe(self) -> None:
        self.redis.delete(*self.keys.all_keys())


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
