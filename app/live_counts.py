"""Live heat in Redis: the SPEC heat value, maintained incrementally by one Lua script.

Keys (all share the hash tag ``{prefix}`` so a script may touch them in Redis Cluster):
  {p}:drv        hash   driver -> "<ts_ms>:<geohash8>:<lat>,<lon>,<heading>,<speed>"
                        the latest ping per active driver (its cell, and its position
                        for markers)
  {p}:seen       zset   driver scored by that ts          to expire quiet drivers
  {p}:c:1..6     hash   cell -> distinct drivers there    one hash per precision 1-6
  {p}:m:<gh6>    set    drivers whose latest ping is in that geohash-6 cell (markers)
  {p}:cutoff     string the newest window start applied   (monotonic)
  {p}:changed    pub/sub channel: a batch changed counts

A driver counts once, in the cell of its most recent ping (by ts, ties broken by the
larger geohash — the replay SQL orders the same way) whose ts is in (now - W, now].
Precisions 1-6 are maintained, not derived, so a frame costs one HGETALL of a hash
holding only non-zero cells; moving within a geohash-6 cell (1.2 x 0.6 km) touches no
counter. Precisions 7 and 8 (street zoom) are counted when read, from the drivers'
stored cells (every driver's, or those of the geohash-6 cells around the views' boxes,
read from their marker sets in one atomic call): their
counters changed with almost every ping and cost ~45 % of the script's work.

The script reads and writes in bulk (one HMGET / HSET / ZADD per 4,000 drivers, one
HINCRBY per changed cell with its summed change) and finds the first changed precision
by comparing bytes. With the street-zoom counters gone too, Redis CPU per ping went from
~10.4-11.3 to ~4.4-4.8 us (`python -m bench.live_apply`, docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import product

import redis

from app.geohash_vec import geohash8_many
from app.ping import Ping, geohash8
from app.settings import Settings
from replay.heat import BASE32, BBox, cover

PRECISIONS = range(1, 9)
# precisions kept as counters; the finer ones are counted from the drivers' values when
# read (a 55 m move changes the geohash-7/8 cells of most pings, and their counters were
# ~45 % of the script's work; a street-zoom view holds few drivers)
COUNTED = range(1, 7)
# (driver_id, geohash-8 cell, lat, lon, heading or None)
MarkerCandidate = tuple[str, str, float, float, float | None]

_LUA = """-- library functions as locals: otherwise each call is a global and a field lookup
local call, unpack, min, tonumber = redis.call, unpack, math.min, tonumber
local sub, byte, find, gmatch = string.sub, string.byte, string.find, string.gmatch

local cutoff = tonumber(ARGV[1])
local want = tonumber(ARGV[2])
local stored = tonumber(call('GET', KEYS[3]) or '-1')
if stored >= cutoff then
  cutoff = stored
else
  call('SET', KEYS[3], ARGV[1])
end

-- drivers per geohash-6 cell, for markers at street zoom ({p}:m:<gh6>, same hash tag)
local mprefix = sub(KEYS[1], 1, -4) .. 'm:'
-- count changes summed per (precision, cell) and applied once each at the end
-- counted precisions: KEYS[4 ..] are their hashes (1..6; finer ones are read from drv)
local counted = #KEYS - 3
local delta = {}
for p = 1, counted do delta[p] = {} end
local madd, mrem = {}, {}
local function move(p, cell, by)
  local t = delta[p]
  t[cell] = (t[cell] or 0) + by
end
local function mark(sets, cell, d)
  local s = sets[cell]
  if s then s[#s + 1] = d else sets[cell] = {d} end
end
local function bulk(cmd, key, t, n)
  local i = 1
  while i <= n do
    local j = min(n, i + 3999)
    call(cmd, key, unpack(t, i, j))
    i = j + 1
  end
end

local changed, updated = 0, 0
-- drivers whose latest ping left the window
local gone = call('ZRANGEBYSCORE', KEYS[2], '-inf', cutoff)
if #gone > 0 then
  local vals = {}
  for i = 1, #gone, 4000 do
    local part = call('HMGET', KEYS[1], unpack(gone, i, min(#gone, i + 3999)))
    for j = 1, #part do vals[i + j - 1] = part[j] end
  end
  for i, d in ipairs(gone) do
    local v = vals[i]
    if v then
      local c = find(v, ':', 1, true)
      local gh = sub(v, c + 1, c + 8)
      for p = 1, counted do move(p, sub(gh, 1, p), -1) end
      mark(mrem, sub(gh, 1, 6), d)
      changed = changed + 1
    end
  end
  bulk('HDEL', KEYS[1], gone, #gone)
  call('ZREMRANGEBYSCORE', KEYS[2], '-inf', cutoff)
end

-- the batch: driver, ts, value ("<ts>:<geohash8>:<lat>,<lon>,<heading>,<speed>") per
-- driver, either packed in ARGV[3] as "driver\\tts\\tvalue" lines (the usual form: one
-- argument instead of three per driver) or as ARGV[3 ..] in threes (ids holding a tab or
-- a newline); one extra argument can only be the packed form (the other has three
-- per driver)
local D, T, V, n = {}, {}, {}, 0
if #ARGV == 3 then
  for d, ts_s, val in gmatch(ARGV[3], '([^\\t\\n]*)\\t([^\\t\\n]*)\\t([^\\n]*)') do
    n = n + 1; D[n] = d; T[n] = ts_s; V[n] = val
  end
else
  n = (#ARGV - 2) / 3
  for j = 1, n do D[j] = ARGV[3 * j]; T[j] = ARGV[3 * j + 1]; V[j] = ARGV[3 * j + 2] end
end
-- their stored values in bulk, then the writes in bulk: a redis.call per ping and
-- key cost more than the script's own work
local olds = {}
for i = 1, n, 4000 do
  local part = call('HMGET', KEYS[1], unpack(D, i, min(n, i + 3999)))
  for j = 1, #part do olds[i + j - 1] = part[j] end
end
local hset, zadd, nh, nz = {}, {}, 0, 0
for j = 1, n do
  local d, ts_s, val = D[j], T[j], V[j]
  local ts = tonumber(ts_s)
  if ts > cutoff then
    local gh = sub(val, #ts_s + 2, #ts_s + 9)
    local v = olds[j]
    local old_ts, old_gh = nil, nil
    if v then
      local c = find(v, ':', 1, true)
      old_ts = tonumber(sub(v, 1, c - 1))
      old_gh = sub(v, c + 1, c + 8)
    end
    if (not old_ts) or ts > old_ts or (ts == old_ts and gh > old_gh) then
      updated = updated + 1
      nh = nh + 1; hset[nh] = d; nh = nh + 1; hset[nh] = val
      nz = nz + 1; zadd[nz] = ts_s; nz = nz + 1; zadd[nz] = d
      if old_gh ~= gh then
        -- the first precision whose cell differs; most moves stay inside their
        -- geohash-6 cell, which one comparison of two substrings settles
        local k = 1
        if old_gh then
          local old6 = sub(old_gh, 1, 6)
          if old6 == sub(gh, 1, 6) then
            k = 7
          else
            while byte(old_gh, k) == byte(gh, k) do k = k + 1 end
            mark(mrem, old6, d)
          end
        end
        if k <= 6 then mark(madd, sub(gh, 1, 6), d) end
        for p = k, counted do
          if old_gh then move(p, sub(old_gh, 1, p), -1) end
          move(p, sub(gh, 1, p), 1)
        end
        changed = changed + 1
      end
    end
  end
end
bulk('HSET', KEYS[1], hset, nh)
bulk('ZADD', KEYS[2], zadd, nz)
for cell, ds in pairs(mrem) do bulk('SREM', mprefix .. cell, ds, #ds) end
for cell, ds in pairs(madd) do bulk('SADD', mprefix .. cell, ds, #ds) end
for p = 1, counted do
  local key = KEYS[3 + p]
  local zero, nzero = {}, 0
  for cell, by in pairs(delta[p]) do
    if by ~= 0 and call('HINCRBY', key, cell, by) <= 0 then
      nzero = nzero + 1; zero[nzero] = cell
    end
  end
  bulk('HDEL', key, zero, nzero)
end

local oldest = call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
local oldest_ts = oldest[2] or ''
if want > counted then
  -- a finer precision: every active driver's value, counted by the caller
  return {changed, call('HGETALL', KEYS[1]), oldest_ts, updated}
elseif want > 0 then
  return {changed, call('HGETALL', KEYS[3 + want]), oldest_ts, updated}
end
return {changed, {}, oldest_ts, updated}
"""


# The drivers of some geohash-6 cells (ARGV) with their stored values, flat
# [driver, value, ...], read at once from the cells' marker sets: street-zoom counts and
# markers. One call instead of a pipeline of one SMEMBERS per cell and an HMGET.
_READ_LUA = """
local mprefix = string.sub(KEYS[1], 1, -4) .. 'm:'
local out, n = {}, 0
for i = 1, #ARGV do
  local members = redis.call('SMEMBERS', mprefix .. ARGV[i])
  for j = 1, #members, 4000 do
    local vals = redis.call('HMGET', KEYS[1], unpack(members, j, math.min(#members, j + 3999)))
    for k = 1, #vals do
      if vals[k] then
        out[n + 1] = members[j + k - 1]; out[n + 2] = vals[k]; n = n + 2
      end
    end
  end
end
return out
"""

# boxes needing more geohash-6 cells than this read every driver instead
MAX_COVER_CELLS = 4_096


def cells6_covering(bbox: BBox | None) -> list[str] | None:
    """The geohash-6 cells that intersect ``bbox`` (edges included, as build_frame
    counts a cell touching the box), sorted: the view's ``replay.heat.cover`` at
    precision 6 with every coarser prefix (a block wholly inside the box) spelled out.
    None for no box or one needing more than MAX_COVER_CELLS cells."""
    if bbox is None:
        return None
    prefixes = cover(bbox, 6, MAX_COVER_CELLS)
    if prefixes is None:
        return None
    cells: list[str] = []
    for prefix in prefixes:
        if len(cells) + 32 ** (6 - len(prefix)) > MAX_COVER_CELLS:
            return None
        cells.extend(prefix + "".join(t) for t in product(BASE32, repeat=6 - len(prefix)))
    return cells


def cells6_covering_all(boxes: Iterable[BBox | None]) -> list[str] | None:
    """The union of the boxes' covers; None as soon as one box is unbounded or the
    union grows past MAX_COVER_CELLS."""
    union: set[str] = set()
    for box in boxes:
        cover = cells6_covering(box)
        if cover is None:
            return None
        union.update(cover)
        if len(union) > MAX_COVER_CELLS:
            return None
    return sorted(union)


@dataclass(frozen=True)
class DriverState:
    """A ``{p}:drv`` value: "<ts_ms>:<geohash8>:<lat>,<lon>,<heading>,<speed>" (heading
    and speed empty when the ping had none)."""

    ts: int
    cell8: str
    lat: float
    lon: float
    heading: float | None
    speed_kmh: float | None

    @classmethod
    def read(cls, value: bytes | str | None) -> DriverState | None:
        """None for a missing value, or one an older version wrote without the position
        (it leaves with the window)."""
        if value is None:
            return None
        text = _text(value)
        return cls.parse(text) if text.count(":") == 2 else None

    @classmethod
    def parse(cls, text: str) -> DriverState:
        ts, cell8, position = text.split(":", 2)
        lat, lon, heading, speed = position.split(",")
        return cls(
            int(float(ts)),
            cell8,
            float(lat),
            float(lon),
            float(heading) if heading else None,
            float(speed) if speed else None,
        )


@dataclass(frozen=True)
class LiveKeys:
    drv: str
    seen: str
    cutoff: str
    counts: tuple[str, ...]
    changed_channel: str
    # the earlier layout's keys (c:7 and c:8 counters, positions in their own hash):
    # an upgrade in place leaves them, a wipe removes them too
    legacy: tuple[str, ...] = ()

    @classmethod
    def for_settings(cls, settings: Settings) -> LiveKeys:
        p = settings.redis_key_prefix
        return cls(
            drv=p + "drv",
            seen=p + "seen",
            cutoff=p + "cutoff",
            counts=tuple(f"{p}c:{n}" for n in COUNTED),
            changed_channel=p + "changed",
            legacy=(f"{p}c:7", f"{p}c:8", p + "pos"),
        )

    def script_keys(self) -> list[str]:
        return [self.drv, self.seen, self.cutoff, *self.counts]

    def all_keys(self) -> list[str]:
        return [*self.script_keys(), *self.legacy]


def latest_per_driver(pings: Iterable[Ping]) -> dict[str, tuple[int, str, Ping]]:
    """Keep each driver's most recent ping of a batch (ts, then geohash as tie-break):
    the script would discard the others anyway, so they never cross the wire. The
    geohash is computed for the winners only, all at once (and for ties on ts)."""
    best: dict[str, Ping] = {}
    get = best.get
    for ping in pings:
        current = get(ping.driver_id)
        if (
            current is None
            or ping.ts > current.ts
            or (
                ping.ts == current.ts
                and geohash8(ping.lat, ping.lon) > geohash8(current.lat, current.lon)
            )
        ):
            best[ping.driver_id] = ping
    winners = list(best.values())
    cells = geohash8_many([p.lat for p in winners], [p.lon for p in winners])
    return {p.driver_id: (p.ts, cell, p) for p, cell in zip(winners, cells, strict=True)}


# the ``{p}:drv`` value, "<ts_ms>:<geohash8>:<lat>,<lon>,<heading>,<speed>" (heading and
# speed empty when the ping had none), and a packed batch line: "driver\tts\t" + value
_VALUE = "%d:%s:%.6f,%.6f,%s,%s"
_LINE = "%s\t%d\t" + _VALUE
_LINE_FULL = "%s\t%d\t%d:%s:%.6f,%.6f,%g,%g"  # both present: no per-field formatting


def _opt(value: float | None) -> str:
    return "" if value is None else format(value, "g")


def stored_value(ts: int, cell8: str, ping: Ping) -> str:
    """The ``{p}:drv`` value for a ping (DriverState.parse reads it back)."""
    return _VALUE % (ts, cell8, ping.lat, ping.lon, _opt(ping.heading), _opt(ping.speed_kmh))


def packed_lines(latest: dict[str, tuple[int, str, Ping]]) -> str:
    """The batch as one "driver\tts\tvalue" line per driver, the value as
    ``stored_value`` writes it (ids holding a tab or a newline cannot travel this way).
    One format per line instead of a call and an f-string with four format specs:
    1.10 -> 0.82 us per driver (docs/performance.md, seventh round)."""
    return "\n".join(
        [
            _LINE_FULL % (d, ts, ts, gh, p.lat, p.lon, p.heading, p.speed_kmh)
            if p.heading is not None and p.speed_kmh is not None
            else _LINE % (d, ts, ts, gh, p.lat, p.lon, _opt(p.heading), _opt(p.speed_kmh))
            for d, (ts, gh, p) in latest.items()
        ]
    )


class LiveCounts:
    """The live heat state of one Redis prefix."""

    def __init__(self, client: redis.Redis, settings: Settings):
        self.redis = client
        self.settings = settings
        self.keys = LiveKeys.for_settings(settings)
        self._script = client.register_script(_LUA)
        self._read = client.register_script(_READ_LUA)

    def _run(
        self, now_ms: int, want: int, args: list[str | int]
    ) -> tuple[int, dict[str, int], int | None, int]:
        cutoff = now_ms - self.settings.live_window_ms
        changed, flat, oldest, updated = self._script(
            keys=self.keys.script_keys(), args=[cutoff, want, *args]
        )
        if want > COUNTED[-1]:
            cells = _count_cells(flat[1::2], want)
        else:
            cells = {_text(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}
        # when the oldest live driver drops out of the window, counts change by themselves
        expiry = int(float(_text(oldest))) + self.settings.live_window_ms if oldest else None
        return int(changed), cells, expiry, int(updated)

    def apply(self, pings: Iterable[Ping], now_ms: int) -> int:
        """Apply a batch in one script call; returns how many drivers changed cell
        (including those expired). Pings older than the window are ignored."""
        latest = latest_per_driver(pings)
        args: list[str | int]
        if latest and not any("\t" in d or "\n" in d for d in latest):
            # one "driver\tts\tvalue" line per driver in one argument: redis-py encodes
            # every argument, and three per driver cost the worker ~0.7 us more per
            # driver (docs/performance.md, sixth round)
            args = [packed_lines(latest)]
        else:  # an id the packed lines could not carry: three arguments per driver
            args = [
                x for d, (ts, gh, p) in latest.items() for x in (d, ts, stored_value(ts, gh, p))
            ]
        changed, _, _, updated = self._run(now_ms, 0, args)
        if changed or updated:
            # a driver moving inside its cell changes no count but does move its marker
            self.redis.publish(self.keys.changed_channel, str(now_ms))
        return changed

    def cells(self, precision: int, now_ms: int, bbox: BBox | None = None) -> dict[str, int]:
        """Counts at ``precision`` for time now_ms (expires drivers first, atomically);
        ``bbox`` may limit a street-zoom read to the cells near it (a superset)."""
        return self.snapshot(precision, now_ms, None if bbox is None else [bbox])[0]

    def snapshot(
        self, precision: int, now_ms: int, near: Iterable[BBox | None] | None = None
    ) -> tuple[dict[str, int], int | None]:
        """Counts at ``precision`` for now_ms, and the time (ms) at which they will next
        change by themselves (the oldest active driver leaving the window), if any.

        Precisions 1-6 are whole counter hashes. Precisions 7-8 are counted from the
        drivers' values: of every driver, or, given the boxes the counts are ``near``,
        of the drivers of the geohash-6 cells covering them (read after the expiry, in a
        second atomic call: a batch in between only adds drivers newer than the window).
        Either way every cell intersecting those boxes is exact."""
        if precision not in PRECISIONS:
            raise ValueError("precision must be 1..8")
        cells6 = None
        if precision > COUNTED[-1] and near is not None:
            cells6 = cells6_covering_all(near)
        if cells6 is None:
            _, cells, next_expiry, _ = self._run(now_ms, precision, [])
            return cells, next_expiry
        _, _, next_expiry, _ = self._run(now_ms, 0, [])
        flat = self._read(keys=[self.keys.drv], args=cells6) if cells6 else []
        return _count_cells(flat[1::2], precision), next_expiry

    def marker_candidates(self, cells6: Iterable[str]) -> list[MarkerCandidate]:
        """Active drivers in the given geohash-6 cells with their position, sorted by
        driver: one atomic read of the cells' driver sets and the drivers' values."""
        names = sorted(set(cells6))
        if not names:
            return []
        flat = self._read(keys=[self.keys.drv], args=names)
        found: dict[str, MarkerCandidate] = {}  # a driver is in one set; keyed anyway
        for i in range(0, len(flat), 2):
            state = DriverState.read(flat[i + 1])
            if state is not None:
                driver = _text(flat[i])
                found[driver] = (driver, state.cell8, state.lat, state.lon, state.heading)
        return [found[d] for d in sorted(found)]

    def driver(self, driver_id: str) -> DriverState | None:
        """One driver's stored latest ping (it may be older than the window: the caller
        decides, as the state is expired lazily)."""
        return DriverState.read(self.redis.hget(self.keys.drv, driver_id))

    def wipe(self) -> None:
        self.redis.delete(*self.keys.all_keys())


def _count_cells(values: list[bytes], precision: int) -> dict[str, int]:
    """Drivers per cell at ``precision`` from stored values "<ts>:<geohash8>:..."."""
    counts: dict[bytes, int] = {}
    for value in values:
        start = value.index(b":") + 1
        cell = value[start : start + precision]
        counts[cell] = counts.get(cell, 0) + 1
    return {cell.decode(): n for cell, n in counts.items()}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
