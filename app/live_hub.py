"""Live fan-out inside one web process: frames scale with views, not with viewers.

One hub thread per process listens on the live worker's change channel (Redis pub/sub)
and, at most LIVE_FPS times a second and only when something changed (a batch was
applied, or the oldest active driver is due to leave the window), reads the counts once
per precision in use, builds one frame per distinct view, serialises it once and hands
the same bytes — framed, and compressed for sockets that negotiated it, once per view
(app.ws_frames) — to every socket watching that view. Each socket has a one-slot mailbox:
a slow client gets the newest frame, never a growing queue. Every process reads the same
Redis state, so several gunicorn workers or hosts all show the same live frame.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Protocol

import msgspec
import redis

from app import metrics
from app.live_counts import LiveCounts
from app.settings import Settings
from app.ws_frames import WireMessage
from replay.heat import (
    BBox,
    CellIndex,
    FrameParts,
    MarkerParts,
    View,
    attach_markers,
    build_frame,
    cover,
    encode_frame,
    markers_wanted,
)

log = logging.getLogger(__name__)

MAX_REPLIES = 16
# from this many views at one precision a round builds all of its frame parts up front
EAGER_PARTS_VIEWS = 16
COVER_LIMIT = 4096  # prefixes; a bigger view (huge box, fine cells) is built plainly
NEAR_BOXES_MAX = 32  # street-zoom views whose boxes a snapshot reads around one by one
MISSING: Any = object()
WRITTEN, QUEUED, REPLACED = 0, 1, 2  # what became of a frame put in a mailbox


def view_key(view: View) -> tuple[Any, ...]:
    return (view.precision, None if view.bbox is None else tuple(view.bbox.as_list()))


class FrameWriter(Protocol):
    """What a socket offers the hub to write a frame itself (app.ws.WholeFrameSocket)."""

    form: str | None

    def try_send(self, data: bytes) -> int: ...

    def finish(self, rest: bytes) -> None: ...

    def abandon(self, frame_begun: bool) -> None: ...


class Mailbox:
    """The newest frame plus a few control replies, waiting for one socket's sender.

    With a ``writer``, a frame that finds nothing waiting and the sender idle is written
    at once by whoever puts it (the hub's round), if the socket takes it without
    waiting: no wake-up of the sender thread, which with 1,000 sockets meant 2,000
    thread switches a second through one GIL. If the socket takes only part, the rest
    (``writer.finish``) is the sender's first job; if none, the frame waits here.
    ``on_pending`` is called (under the mailbox's lock) whenever something is left
    for the sender: the socket starts its sender thread then, not before, so a socket
    whose frames the hub always writes itself never has one."""

    def __init__(
        self,
        writer: FrameWriter | None = None,
        on_pending: Callable[[], None] | None = None,
    ) -> None:
        self._cond = threading.Condition()
        self._frame: WireMessage | None = None
        self._replies: list[str] = []
        self._rest: bytes | None = None  # a frame's unwritten end; the socket stays locked
        self._sending = False  # the sender holds items taken and not yet sent
        self.writer = writer
        self._on_pending = on_pending
        self.closed = False
        self.replaced = 0  # frames overwritten before the client took them
        self.written = 0  # frames the putter wrote itself

    def put_frame(self, payload: WireMessage) -> int:
        """WRITTEN, QUEUED, or REPLACED (an older frame the client had not taken yet
        was dropped for this one)."""
        with self._cond:
            writer = self.writer
            if (
                writer is not None
                and self._frame is None
                and not self._replies
                and self._rest is None
                and not self._sending
                and not self.closed
            ):
                data = payload.frame(writer.form)
                n = writer.try_send(data)
                if n:
                    self.written += 1
                    if n < len(data):
                        self._rest = data[n:]
                        self._pending()
                    return WRITTEN
            outcome = QUEUED
            if self._frame is not None:
                self.replaced += 1
                outcome = REPLACED
            self._frame = payload
            self._pending()
            return outcome

    def put_reply(self, payload: str) -> None:
        with self._cond:
            if len(self._replies) < MAX_REPLIES:
                self._replies.append(payload)
            self._pending()

    def take(self, timeout: float | None = None) -> list[bytes | str | WireMessage]:
        """What to send, in order: a frame's unwritten end (bytes, for
        ``writer.finish``), replies, the newest frame. Call ``sent()`` once sent."""
        with self._cond:
            self._cond.wait_for(
                lambda: (
                    self.closed
                    or self._frame is not None
                    or bool(self._replies)
                    or self._rest is not None
                ),
                timeout,
            )
            out: list[bytes | str | WireMessage] = []
            if self._rest is not None:
                out.append(self._rest)
                self._rest = None
            out.extend(self._replies)
            self._replies = []
            if self._frame is not None:
                out.append(self._frame)
                self._frame = None
            self._sending = bool(out)
            return out

    def _pending(self) -> None:
        self._cond.notify()
        if self._on_pending is not None:
            self._on_pending()

    def sent(self) -> None:
        with self._cond:
            self._sending = False

    def leftover(self) -> bytes | None:
        """The end of a frame the putter began, still unwritten when the sender stops
        (the mailbox was closed before the sender took it): it must still be written,
        since the socket stays locked until it is."""
        with self._cond:
            rest, self._rest = self._rest, None
            return rest

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def abandon(self) -> None:
        """No sender can be had (no thread to start): close, and have the writer drop
        the connection, releasing the socket if a frame was begun; the client then
        reconnects rather than waiting on a socket nobody writes."""
        with self._cond:
            self.closed = True
            frame_begun, self._rest = self._rest is not None, None
            self._cond.notify_all()
            if self.writer is not None:
                self.writer.abandon(frame_begun)


@dataclass(eq=False)
class Subscription:
    view: View
    mailbox: Mailbox = field(default_factory=Mailbox)


class LiveHub:
    def __init__(self, client: redis.Redis, settings: Settings):
        self.settings = settings
        self.redis = client
        self.live = LiveCounts(client, settings)
        self._lock = threading.Lock()
        self._views: dict[tuple[Any, ...], set[Subscription]] = defaultdict(set)
        self._last_cells: dict[tuple[Any, ...], tuple[str, str | None]] = {}
        # each view's box as geohash prefixes (replay.heat.cover); None: too big, built
        # the plain way
        self._covers: dict[tuple[Any, ...], tuple[str, ...] | None] = {}
        self._last_payload: dict[tuple[Any, ...], WireMessage] = {}
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listener: threading.Thread | None = None
        self._next_expiry_ms: int | None = None
        self.builds = 0
        self._outcomes = [0, 0, 0]  # this round's put_frame outcomes, by WRITTEN...

    # --- sockets -------------------------------------------------------------------
    def subscribe(self, view: View, mailbox: Mailbox | None = None) -> Subscription:
        sub = Subscription(view, mailbox or Mailbox())
        self._attach(sub)
        self._ensure_running()
        return sub

    def change_view(self, sub: Subscription, view: View) -> None:
        with self._lock:
            self._detach_locked(sub)
            # from here on no round delivers the old view's frames to this socket
            sub.view = view
        self._attach(sub)

    def unsubscribe(self, sub: Subscription) -> None:
        self._detach(sub)
        sub.mailbox.close()

    def sockets(self) -> int:
        with self._lock:
            return sum(len(s) for s in self._views.values())

    def _attach(self, sub: Subscription) -> None:
        """Register and deliver the view's current frame at once (a frame on connect):
        the frame other sockets on this view last got, or a fresh one for a new view."""
        key = view_key(sub.view)
        with self._lock:
            payload = self._last_payload.get(key)
            if payload is not None:
                self._views[key].add(sub)
        if payload is None:
            # here, on the socket's thread, not in the hub's round (~1 ms a view)
            prefixes = cover(sub.view.bbox, sub.view.precision, COVER_LIMIT)
            now = _now_ms()
            cells, next_expiry = self.live.snapshot(sub.view.precision, now, [sub.view.bbox])
            frame = self._frame(cells, sub.view, now)
            payload = WireMessage(_dumps(frame))
            with self._lock:
                if key not in self._last_payload:
                    self._last_cells[key] = _content(frame)
                    self._last_payload[key] = payload
                    self._covers[key] = prefixes
                else:  # another socket opened this view meanwhile; its state is as new
                    payload = self._last_payload[key]
                self._views[key].add(sub)
                self._note_expiry(next_expiry)
        sub.mailbox.put_frame(payload)

    def _detach(self, sub: Subscription) -> None:
        with self._lock:
            self._detach_locked(sub)

    def _detach_locked(self, sub: Subscription) -> None:
        key = view_key(sub.view)
        members = self._views.get(key)
        if members is not None:
            members.discard(sub)
            if not members:
                del self._views[key]
                self._last_cells.pop(key, None)
                self._last_payload.pop(key, None)
                self._covers.pop(key, None)

    def _note_expiry(self, next_expiry: int | None) -> None:
        if next_expiry is not None and (
            self._next_expiry_ms is None or next_expiry < self._next_expiry_ms
        ):
            self._next_expiry_ms = next_expiry

    # --- the hub thread ---------------------------------------------------------------
    def _ensure_running(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="live-hub", daemon=True)
                self._thread.start()
                self._dirty.set()

    def stop(self) -> None:
        self._stop.set()
        for thread in (self._thread, self._listener):
            if thread is not None:
                thread.join(5)

    def _run(self) -> None:
        listener = threading.Thread(target=self._listen, name="live-hub-pubsub", daemon=True)
        self._listener = listener
        listener.start()
        interval = 1.0 / self.settings.live_fps
        last_build = 0.0
        while not self._stop.is_set():
            # sleep until a batch changed counts, or the oldest driver is due to expire
            expiry = self._next_expiry_ms
            timeout = 1.0 if expiry is None else min(1.0, max(0.0, (expiry - _now_ms()) / 1000))
            self._dirty.wait(timeout)
            due = expiry is not None and _now_ms() >= expiry
            if self._stop.is_set() or not (self._dirty.is_set() or due):
                continue
            # at most LIVE_FPS rounds a second; changes arriving meanwhile join the round
            self._stop.wait(max(0.0, last_build + interval - time.monotonic()))
            self._dirty.clear()
            with self._lock:
                if not self._views:
                    self._next_expiry_ms = None
                    continue
            last_build = time.monotonic()
            try:
                self.build_and_deliver()
            except redis.RedisError as exc:
                log.warning("live hub: cannot read live counts: %s", exc)
                self._dirty.set()
                self._stop.wait(1.0)
            except Exception:
                # the hub thread serves every live socket of the process: a round that
                # fails is logged and retried, never the end of the thread
                log.exception("live hub: a round failed")
                self._dirty.set()
                self._stop.wait(1.0)

    def build_and_deliver(self) -> int:
        """One round: counts once per precision, one frame per view, to every mailbox
        whose view changed. Returns the number of frames built.

        A view's frame is assembled from JSON encoded once per round: each precision's
        cells per geohash prefix (replay.heat.FrameParts), each marker once
        (MarkerParts), joined along the view's cover. The bytes are build_frame's +
        attach_markers' (tests/test_frame_parts.py, tests/test_live_hub_rounds.py)."""
        started = time.perf_counter()
        with self._lock:
            views = {key: next(iter(subs)).view for key, subs in self._views.items()}
            covers = {key: self._covers.get(key, MISSING) for key in views}
            self._next_expiry_ms = None
        now = _now_ms()
        settings = self.settings
        # every precision's counts first, at one instant (the frames' t)
        snapshots: dict[int, dict[str, int]] = {}
        for precision in sorted({view.precision for view in views.values()}):
            # street zoom (7-8) reads only the drivers around the views' boxes
            near = _near([view.bbox for view in views.values() if view.precision == precision])
            snapshots[precision], next_expiry = self.live.snapshot(precision, now, near)
            with self._lock:
                self._note_expiry(next_expiry)
        # many views ask for ~100 prefixes each: build every prefix's part at once;
        # a few views ask for few: encode only those (see FrameParts). Built for a
        # precision only once a view's cover asks: a view too big for a cover is built
        # plainly, and sorting every cell of the snapshot for it was wasted
        per_precision = Counter(view.precision for view in views.values())
        parts: dict[int, FrameParts] = {}
        indexes: dict[int, CellIndex] = {}  # for views too big for a cover
        built: dict[tuple[Any, ...], _Built] = {}
        for key, view in views.items():
            precision = view.precision
            prefixes = covers[key]
            if prefixes is MISSING:
                prefixes = covers[key] = cover(view.bbox, precision, COVER_LIMIT)
            if prefixes is None:
                if precision not in indexes:
                    indexes[precision] = CellIndex(snapshots[precision], precision)
                built[key] = _plain(indexes[precision], view, now)
            else:
                if precision not in parts:
                    parts[precision] = FrameParts(
                        snapshots[precision],
                        precision,
                        keep_cells=precision >= settings.markers_min_precision,
                        eager=per_precision[precision] >= EAGER_PARTS_VIEWS,
                    )
                built[key] = parts[precision].view(prefixes)
            if not self._wants_markers(view, built[key]):
                self._deliver(key, view, built[key], None, now, covers[key])
        # the frames with markers, once their drivers are read (the others are out)
        for key, m in self._markers(views, built).items():
            self._deliver(key, views[key], built[key], m, now, covers[key])
        self.builds += len(built)
        outcomes, self._outcomes = self._outcomes, [0, 0, 0]
        metrics.incr(
            self.redis,
            self.settings.redis_key_prefix,
            {
                "live_frame_rounds": 1,
                "live_frames_built": len(built),
                "live_frame_seconds": time.perf_counter() - started,
                # frames the hub wrote to a socket itself / left to its sender thread /
                # that replaced one a slow client had not taken (it never gets that one)
                "live_frames_written": outcomes[WRITTEN],
                "live_frames_queued": outcomes[QUEUED],
                "live_frames_replaced": outcomes[REPLACED],
            },
        )
        return len(built)

    def _deliver(
        self,
        key: tuple[Any, ...],
        view: View,
        built: _Built,
        markers: str | None,
        now: int,
        prefixes: tuple[str, ...] | None,
    ) -> None:
        """Encode the view's frame and hand it to its sockets, unless what they see
        (cells, markers) is what they last got."""
        cells_json, total, peak, _ = built
        content = ("[" + cells_json + "]", None if markers is None else f"[{markers}]")
        if self._last_cells.get(key) == content:
            return
        payload = WireMessage(
            encode_frame("live", now, view.precision, cells_json, total, peak, view.bbox, markers)
        )
        with self._lock:
            members = self._views.get(key)
            if not members:
                return  # every socket left or moved on while we read
            self._last_cells[key] = content
            self._last_payload[key] = payload
            self._covers.setdefault(key, prefixes)
            outcomes = self._outcomes
            for sub in members:
                try:
                    outcomes[sub.mailbox.put_frame(payload)] += 1
                except Exception:  # one socket's trouble is not the other sockets'
                    log.exception("live hub: cannot hand a frame to a socket")

    def _wants_markers(self, view: View, built: _Built) -> bool:
        """replay.heat.markers_wanted, on a frame still in parts."""
        settings = self.settings
        return view.precision >= settings.markers_min_precision and (
            0 < built[1] <= settings.markers_max
        )

    def _markers(
        self, views: Mapping[tuple[Any, ...], View], built: Mapping[tuple[Any, ...], _Built]
    ) -> dict[tuple[Any, ...], str]:
        """The markers (JSON without brackets) of every view that wants them, from one
        read of the union of their geohash-6 cells (views overlap, and a per-view read
        cost views x cells)."""
        wanting = [key for key, view in views.items() if self._wants_markers(view, built[key])]
        if not wanting:
            return {}
        shown: set[str] = set()
        for key in wanting:
            shown.update(chain.from_iterable(built[key][3]))
        # a frame's candidates are read by the geohash-6 cells of its cells (as
        # with_live_markers does; below precision 6 that finds none)
        candidates = MarkerParts(self.live.marker_candidates({cell[:6] for cell in shown}))
        return {
            key: candidates.json_for(chain.from_iterable(built[key][3]), views[key].precision)
            if views[key].precision >= 6
            else ""
            for key in wanting
        }

    def _frame(self, cells: Mapping[str, int], view: View, now: int) -> dict[str, Any]:
        return with_live_markers(
            self.live, self.settings, view, build_frame(cells, view, now, "live")
        )

    def _listen(self) -> None:
        channel = self.live.keys.changed_channel
        while not self._stop.is_set():
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(channel)
                self._dirty.set()  # anything may have changed while we were away
                while not self._stop.is_set():
                    if pubsub.get_message(timeout=1.0) is not None:
                        self._dirty.set()
            except Exception as exc:  # closed under us at shutdown, or Redis went away
                if self._stop.is_set():
                    return
                log.warning("live hub: change channel lost (%s); resubscribing", exc)
                self._stop.wait(1.0)
            finally:
                pubsub.close()


def with_live_markers(
    live: LiveCounts, settings: Settings, view: View, frame: dict[str, Any]
) -> dict[str, Any]:
    """Street-zoom frames carry the drivers themselves (see replay.heat.attach_markers)."""
    if markers_wanted(view, frame, settings.markers_min_precision, settings.markers_max):
        cells6 = {cell[:6] for cell, _ in frame["cells"]}
        attach_markers(frame, live.marker_candidates(cells6))
    return frame


def _content(frame: dict[str, Any]) -> tuple[str, str | None]:
    """What a viewer sees change: the cells, and the markers when there are any."""
    markers = frame.get("markers")
    return _dumps(frame["cells"]), None if markers is None else _dumps(markers)


# A view's frame this round, still in parts (replay.heat.encode_frame joins them): the
# cells as JSON without brackets, total, max, and the cells in groups (for markers). A
# plain tuple of strings and numbers, which the garbage collector stops tracking (a
# NamedTuple it never does): a round's 1,000 of them then do not bring on the full
# collections that pause a process holding 1,000 sockets.
_Built = tuple[str, int, int, tuple[tuple[str, ...], ...]]


def _near(boxes: list[BBox | None]) -> list[BBox | None]:
    """The boxes a street-zoom snapshot reads around: the views' own, or for many views
    the one box around them all (covering 490 boxes one by one cost ~80 ms a round, and
    scattered over a city their union is the city anyway); unbounded views read all."""
    if len(boxes) <= NEAR_BOXES_MAX or any(box is None for box in boxes):
        return boxes
    bounded = [box for box in boxes if box is not None]
    return [
        BBox(
            min(b.west for b in bounded),
            min(b.south for b in bounded),
            max(b.east for b in bounded),
            max(b.north for b in bounded),
        )
    ]


def _plain(index: CellIndex, view: View, now: int) -> _Built:
    """A view whose box is too big for a cover (COVER_LIMIT): build_frame."""
    frame = build_frame(index.within(view.bbox), view, now, "live")
    cells = frame["cells"]
    return _dumps(cells)[1:-1], frame["total"], frame["max"], (tuple(c for c, _ in cells),)


def _now_ms() -> int:
    return int(time.time() * 1000)


_encoder = msgspec.json.Encoder()


def _dumps(frame: Any) -> str:
    # a text frame, serialised once per view per round (msgspec: ~5x stdlib json)
    return _encoder.encode(frame).decode()
