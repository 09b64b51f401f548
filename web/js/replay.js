// Replay mode: pick a range, see its activity strip and busiest hours, and play
// history over /ws/replay with play/pause, speed, scrubbing and keyboard control.

import { apiGet, socketUrl, probeAuth, AuthError } from './api.js';
import { ReconnectingSocket, isAuthMessage } from './socket.js';
import { createScrubber } from './scrubber.js';
import {
    createTimeline, distinctPeaks, normalisePeaks, peakSeparation, timelineStep, PEAK_CANDIDATES,
} from './timeline.js';
import {
    parseTime, isoTime, formatPeakLabel, formatCount,
    toLocalInputValue, fromLocalInputValue,
} from './time.js';

export const SPEEDS = Object.freeze([1, 10, 60, 300, 600, 3600]);
export const DEFAULT_SPEED = 60;
export const REPLAY_STEP_S = 10; // simulated seconds between replay frames
export const PEAK_WINDOW_S = 3600;
export const PEAK_COUNT = 3;
const DAY_MS = 86400e3;
const SEEK_INTERVAL_MS = 100; // at most 10 seeks a second (the server allows 20 messages)

const $ = (id) => document.getElementById(id);

/**
 * @param {object} o
 * @param {() => {precision: number, bbox: number[]}} o.getView
 * @param {(frame: object) => void} o.onFrame
 * @param {(state: string, detail?: string) => void} o.onState
 * @param {(message: string) => void} o.onServerError   brief message, stream continues
 * @param {(err: Error) => void} o.onAuthError           a fetch came back 401/403
 * @param {(tMs: number) => void} o.setClock              show a time on the big clock
 */
export function createReplay({ getView, onFrame, onState, onServerError, onAuthError, setClock }) {
    const els = {
        from: $('range-from'),
        to: $('range-to'),
        form: $('range-form'),
        playRange: $('play-range'),
        peaks: $('peaks'),
        note: $('replay-note'),
        playPause: $('play-pause'),
        speed: $('speed'),
    };

    let active = false;
    let loaded = null; // {from, to, step, points, peaks} of the strip on screen
    let loadAbort = null;
    let session = null;

    const scrubber = createScrubber($('scrubber'), (t) => seek(t));
    const timeline = createTimeline($('timeline'), (t) => pick(t));
    scrubber.disable();

    // Default range: the last 24 h, unless the page URL gives from/to.
    {
        const params = new URLSearchParams(window.location.search);
        const now = Date.now();
        const qFrom = parseTime(params.get('from') ?? '');
        const qTo = parseTime(params.get('to') ?? '');
        const to = Number.isFinite(qTo) ? qTo : now;
        const from = Number.isFinite(qFrom) ? qFrom : to - DAY_MS;
        els.from.value = toLocalInputValue(from);
        els.to.value = toLocalInputValue(to);
    }

    for (const s of SPEEDS) {
        const opt = document.createElement('option');
        opt.value = String(s);
        opt.textContent = `${s}×`;
        if (s === DEFAULT_SPEED) opt.selected = true;
        els.speed.append(opt);
    }

    function publish(detail) {
        if (!active) return;
        let state;
        if (!session) state = 'idle';
        else if (session.ended) state = 'ended';
        // 'open' is not yet serving: a server that accepts and then refuses (expired
        // token, too many sockets) must not flash 'replaying' first
        else if (session.conn === 'open') state = !session.serving ? 'connecting' : session.paused ? 'paused' : 'replaying';
        else state = session.conn; // connecting, reconnecting, unauthorised, error
        onState(state, detail);
        const playing = state === 'replaying';
        els.playPause.textContent = playing ? '❚❚' : '▶';
        els.playPause.setAttribute('aria-label', playing ? 'Pause' : state === 'ended' ? 'Play again' : 'Play');
        els.playPause.title = `${els.playPause.getAttribute('aria-label')} (space)`;
    }

    function note(text) {
        els.note.textContent = text;
    }

    function readRange() {
        const from = fromLocalInputValue(els.from.value);
        const to = fromLocalInputValue(els.to.value);
        if (!Number.isFinite(from) || !Number.isFinite(to)) return { error: 'Pick both a start and an end.' };
        if (to <= from) return { error: 'The end must be after the start.' };
        return { from, to };
    }

    /** Fetch the activity strip and the busiest hours for the chosen range. */
    async function load() {
        const range = readRange();
        if (range.error) {
            note(range.error);
            return;
        }
        if (loadAbort) loadAbort.abort();
        const abort = new AbortController();
        loadAbort = abort;
        const step = timelineStep(range.from, range.to);
        const q = { from: isoTime(range.from), to: isoTime(range.to) };
        note('Loading…');
        els.peaks.replaceChildren();
        try {
            const [tl, pk] = await Promise.all([
                apiGet('api/timeline', { ...q, step }, { signal: abort.signal }),
                apiGet('api/peaks', { ...q, window: PEAK_WINDOW_S, top: PEAK_CANDIDATES }, { signal: abort.signal }),
            ]);
            if (abort.signal.aborted) return;
            const separation = peakSeparation(range.from, range.to, PEAK_WINDOW_S * 1000);
            const peaks = distinctPeaks(normalisePeaks(pk), separation, PEAK_COUNT);
            loaded = { ...range, step: Number(tl && tl.step) || step, points: (tl && tl.points) || [], peaks };
            timeline.setData(loaded);
            showPeaks(peaks);
            const pings = loaded.points.reduce((sum, p) => sum + (Number(Array.isArray(p) ? p[1] : p.pings) || 0), 0);
            note(pings ? `${formatCount(pings)} pings in range. Pick a busy hour, click the strip, or play the range.`
                : 'No pings in this range.');
        } catch (err) {
            if (abort.signal.aborted || (err && err.name === 'AbortError')) return;
            if (err instanceof AuthError) {
                note('Not authorised.');
                onAuthError(err);
                return;
            }
            // Keep the strip usable for picking times even without data.
            loaded = { ...range, step, points: [], peaks: [] };
            timeline.setData(loaded);
            note(`Could not load history: ${err.message}`);
            onServerError(`Could not load history: ${err.message}`);
        } finally {
            if (loadAbort === abort) loadAbort = null;
        }
    }

    function showPeaks(peaks) {
        els.peaks.replaceChildren(...peaks.map((p, i) => {
            const b = document.createElement('button');
            b.type = 'button';
            b.className = 'peak';
            b.dataset.start = String(p.start);
            b.dataset.end = String(p.end);
            const rank = document.createElement('span');
            rank.className = 'peak-rank';
            rank.textContent = String(i + 1);
            rank.setAttribute('aria-hidden', 'true');
            b.append(rank, ` ${formatPeakLabel(p.start, p.end, p.pings)}`);
            b.title = `${formatCount(p.drivers)} drivers — replay this hour`;
            b.addEventListener('click', () => openSession(p.start, p.end));
            return b;
        }));
    }

    function closeSession() {
        if (session) {
            clearTimeout(session.seekTimer);
            session.socket.stop();
        }
        session = null;
        timeline.setSession(null);
        scrubber.disable();
    }

    /** Open /ws/replay for [from, to] and play, optionally starting at startAt. */
    function openSession(from, to, startAt = from) {
        closeSession();
        const s = {
            from,
            to,
            step: REPLAY_STEP_S,
            speed: Number(els.speed.value) || DEFAULT_SPEED,
            paused: false,
            ended: false,
            cursor: startAt,
            resumeAt: startAt, // where a (re)connect should continue
            // While paused, only frames for times we asked for (a seek's target, the
            // cursor after a view change) are drawn: a frame the server sent just
            // before it read "pause" must not move the clock on.
            awaiting: new Set(),
            serving: false, // a frame or state arrived on this connection
            urlView: '', // the view the socket URL carried
            seekTarget: startAt, // the newest seek asked for (sent when the throttle allows)
            seekTimer: null,
            // the last seek sent whose frame has not come yet: frames before it (the
            // stream's start after a reconnect that resumes mid-range) are skipped
            seekInFlight: null,
            lastSeekSent: 0,
            conn: 'connecting',
        };
        s.socket = new ReconnectingSocket({
            url: () => {
                const view = getView();
                s.urlView = JSON.stringify(view);
                return socketUrl('ws/replay', {
                    from: isoTime(s.from),
                    to: isoTime(s.to),
                    speed: s.speed,
                    step: s.step,
                    precision: view.precision,
                    bbox: view.bbox,
                });
            },
            probeAuth: () => probeAuth(getView()),
            shouldReconnect: () => !s.ended,
            onOpen: () => {
                // pause first, so the seek's answer already says paused
                if (s.paused) s.socket.send({ op: 'pause' });
                // A reconnect (or a start mid-range) continues where we were.
                s.awaiting = new Set([s.resumeAt]);
                s.seekInFlight = s.resumeAt > s.from ? s.resumeAt : null;
                if (s.seekInFlight !== null) s.socket.send({ op: 'seek', t: s.resumeAt });
                // the map moved while the socket was connecting: the URL's view is stale
                const view = getView();
                if (JSON.stringify(view) !== s.urlView) {
                    s.socket.send({ op: 'view', precision: view.precision, bbox: view.bbox });
                }
            },
            onMessage: (msg) => handleMessage(s, msg),
            onStatus: (status, detail) => {
                if (session !== s) return;
                s.conn = status;
                s.serving = false;
                publish(detail);
            },
        });
        session = s;
        scrubber.setRange(from, to, s.step * 1000);
        scrubber.setValue(startAt);
        timeline.setSession({ from, to });
        timeline.setCursor(startAt);
        setClock(startAt);
        s.socket.start();
    }

    function handleMessage(s, msg) {
        if (session !== s) return;
        if ((msg.type === 'frame' || msg.type === 'state') && !s.serving) {
            s.serving = true;
            publish();
        }
        if (msg.type === 'frame') {
            const t = parseTime(msg.t);
            if (s.paused) {
                if (!s.awaiting.has(t)) return; // sent before the server saw our pause
                s.awaiting.delete(t);
            } else if (s.seekInFlight !== null && t !== s.seekInFlight) {
                return; // the stream from before our seek
            }
            if (t === s.seekInFlight) s.seekInFlight = null;
            // a frame for an earlier seek (keys held, a drag) is drawn, but the cursor
            // stays on the newest target: it is what the next step counts from
            if (Number.isFinite(t) && s.seekInFlight === null && s.seekTimer === null) {
                s.cursor = t;
                s.resumeAt = t;
                scrubber.setValue(t);
                timeline.setCursor(t);
            }
            onFrame(msg); // draws it and sets the clock from its t
        } else if (msg.type === 'state') {
            // The server's answer to each control message: trust it over our guess.
            if (typeof msg.paused === 'boolean' && msg.paused !== s.paused && !msg.ended) {
                s.paused = msg.paused;
                publish();
            }
            const speed = Number(msg.speed);
            if (SPEEDS.includes(speed) && speed !== s.speed) {
                s.speed = speed;
                els.speed.value = String(speed);
            }
        } else if (msg.type === 'end') {
            s.ended = true;
            s.socket.stop(); // a later play or seek reconnects
            publish();
        } else if (msg.type === 'error') {
            s.seekInFlight = null; // a refused seek: take the stream as it comes
            if (!isAuthMessage(msg)) onServerError(msg.message || msg.error || 'replay error');
        }
    }

    function togglePlay() {
        const s = session;
        if (!s) {
            const range = loaded || readRange();
            if (range.error) note(range.error);
            else openSession(range.from, range.to);
            return;
        }
        if (s.ended) {
            openSession(s.from, s.to);
            return;
        }
        if (s.conn === 'unauthorised' || s.conn === 'error') {
            openSession(s.from, s.to, s.cursor);
            return;
        }
        s.paused = !s.paused;
        s.awaiting.clear();
        s.socket.send({ op: s.paused ? 'pause' : 'play' });
        publish();
    }

    function seek(t) {
        const s = session;
        if (!s || !Number.isFinite(t)) return;
        const target = Math.min(s.to, Math.max(s.from, Math.round(t)));
        s.cursor = target;
        s.resumeAt = target;
        timeline.setCursor(target);
        scrubber.setValue(target);
        if (s.ended) {
            // The server is done with this stream; start again at the new spot.
            s.ended = false;
            s.conn = 'connecting';
            s.socket.start();
            return;
        }
        s.seekTarget = target;
        sendSeek(s);
    }

    // Seeks leave at most every SEEK_INTERVAL_MS (a held arrow key repeats ~30 times a
    // second, past the server's control-message rate); the newest target always goes last.
    function sendSeek(s) {
        clearTimeout(s.seekTimer);
        s.seekTimer = null;
        const wait = s.lastSeekSent + SEEK_INTERVAL_MS - Date.now();
        if (wait > 0) {
            s.seekTimer = setTimeout(() => sendSeek(s), wait);
            return;
        }
        s.lastSeekSent = Date.now();
        // if not connected, the reconnect resumes at resumeAt
        const t = s.seekTarget;
        if (s.socket.send({ op: 'seek', t })) {
            s.seekInFlight = t;
            if (s.paused) s.awaiting.add(t);
        }
    }

    function stepBy(direction) {
        if (session) seek(session.cursor + direction * session.step * 1000);
    }

    function pick(t) {
        if (session && t >= session.from && t <= session.to) {
            seek(t);
        } else if (loaded && t >= loaded.from && t < loaded.to) {
            openSession(loaded.from, loaded.to, t);
        }
    }

    els.form.addEventListener('submit', (ev) => {
        ev.preventDefault();
        load();
    });
    els.playRange.addEventListener('click', () => {
        const range = readRange();
        if (range.error) note(range.error);
        else openSession(range.from, range.to);
    });
    els.playPause.addEventListener('click', () => togglePlay());
    els.speed.addEventListener('change', () => {
        const value = Number(els.speed.value);
        if (session) {
            session.speed = value;
            session.socket.send({ op: 'speed', value });
        }
    });

    // Space = play/pause, ←/→ = one replay step. Not while typing in a field.
    const typing = (el) => el && (el.isContentEditable || el.tagName === 'SELECT' || el.tagName === 'TEXTAREA'
        || (el.tagName === 'INPUT' && el.type !== 'range'));
    function onKey(ev) {
        if (!active || ev.altKey || ev.ctrlKey || ev.metaKey || typing(ev.target)) return;
        if (ev.key === ' ' || ev.code === 'Space') {
            ev.preventDefault(); // no page scroll, and no click on a focused button
            if (ev.type === 'keydown' && !ev.repeat) togglePlay();
        } else if (ev.type === 'keydown' && (ev.key === 'ArrowLeft' || ev.key === 'ArrowRight')) {
            ev.preventDefault();
            stepBy(ev.key === 'ArrowLeft' ? -1 : 1);
        }
    }
    document.addEventListener('keydown', onKey);
    document.addEventListener('keyup', onKey);

    return {
        start() {
            active = true;
            publish();
            if (!loaded) load();
        },
        stop() {
            active = false;
            closeSession();
            if (loadAbort) loadAbort.abort();
        },
        /** Retry after an auth fix or error: reload the strip, reopen the stream if one was open. */
        restart() {
            const s = session;
            load();
            if (s) openSession(s.from, s.to, s.cursor);
            else publish();
        },
        setView(view) {
            const s = session;
            if (!s) return;
            if (s.ended) {
                // the stream is done (its socket closed): fetch the frame on screen anew
                apiGet('api/replay/frame', { t: isoTime(s.cursor), precision: view.precision, bbox: view.bbox })
                    .then((frame) => { if (session === s && s.ended) onFrame(frame); })
                    .catch((err) => { if (!(err instanceof AuthError)) onServerError(String(err.message || err)); });
                return;
            }
            // the server answers with the frame at its position, drawn even while paused
            if (s.socket.send({ op: 'view', precision: view.precision, bbox: view.bbox }) && s.paused) {
                s.awaiting.add(s.cursor);
            }
        },
        load,
        openSession,
        togglePlay,
        seek,
        stepBy,
        get session() {
            return session ? {
                from: session.from, to: session.to, step: session.step, speed: session.speed,
                paused: session.paused, ended: session.ended, cursor: session.cursor, conn: session.conn,
            } : null;
        },
    };
}
