// The page's shared chrome: status badge, drawn-state attributes, counters, toast,
// and the "not authorised" panel. Controllers call these; nothing here talks to
// the server.

import { clockParts, formatCount, formatTimeOfDay, parseTime } from './time.js';

// Every state the badge can show. Connection states come from the socket; the
// playback ones from replay. 'idle' is replay mode before a range or peak is played.
export const STATES = Object.freeze([
    'connecting', 'live', 'reconnecting', 'error', 'unauthorised',
    'replaying', 'paused', 'ended', 'idle',
]);

const $ = (id) => document.getElementById(id);

const drawn = $('heat-state');
const badge = $('status');
const authPanel = $('auth-panel');
const errorPanel = $('error-panel');
const toast = $('toast');

export function setMode(mode) {
    drawn.dataset.mode = mode;
    document.body.dataset.mode = mode;
}

export function getState() {
    return drawn.dataset.state;
}

/** Show a state in the badge and on #heat-state / <body>; detail goes in the tooltip. */
export function setState(state, detail = '') {
    drawn.dataset.state = state;
    document.body.dataset.state = state;
    badge.dataset.state = state;
    badge.textContent = state;
    badge.title = detail || '';
    authPanel.hidden = state !== 'unauthorised';
    errorPanel.hidden = state !== 'error';
    if (state === 'error') $('error-detail').textContent = detail || 'The connection failed.';
    if (state === 'unauthorised') {
        // The server's own words ("token expired", "needs the 'viewer' role"): they say
        // what to do next, which "not authorised" alone does not.
        $('auth-reason').textContent = detail ? `The server said: ${detail}` : '';
        $('auth-reason').hidden = !detail;
    }
}

/** Record a drawn frame on #heat-state and in the visible counters. */
export function setDrawn(summary, frames) {
    drawn.dataset.precision = summary.precision ?? '';
    drawn.dataset.total = String(summary.total);
    drawn.dataset.cells = String(summary.cells);
    drawn.dataset.max = String(summary.max);
    drawn.dataset.t = summary.t ?? '';
    drawn.dataset.frames = String(frames);
    drawn.dataset.markers = String(summary.markers ?? 0);
    $('count-markers').textContent = summary.markers ? formatCount(summary.markers) : '–';
    $('count-total').textContent = formatCount(summary.total);
    $('count-cells').textContent = formatCount(summary.cells);
    const ms = parseTime(summary.t);
    $('count-time').textContent = Number.isFinite(ms) ? formatTimeOfDay(ms) : '–';
    $('count-time').title = summary.t ? String(summary.t) : '';
}

export function resetDrawn() {
    for (const key of ['precision', 'total', 'cells', 'max', 't']) drawn.dataset[key] = '';
    drawn.dataset.frames = '0';
    drawn.dataset.markers = '0';
    $('count-markers').textContent = '–';
    $('count-total').textContent = '–';
    $('count-cells').textContent = '–';
    $('count-time').textContent = '–';
}

export function setStyleAttr(style) {
    drawn.dataset.style = style;
}

/** The big simulated clock over the map (replay mode); NaN blanks it. */
export function setClock(t) {
    const c = Number.isFinite(t) ? clockParts(t) : { date: '', time: '--:--:--', zone: '' };
    $('clock-date').textContent = c.date;
    $('clock-time').textContent = c.time;
    $('clock-zone').textContent = c.zone;
}

let toastTimer = null;

/** A brief message over the map (server error messages, failed loads). */
export function showToast(message, ms = 4000) {
    toast.textContent = message;
    toast.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { toast.hidden = true; }, ms);
}

/** Wire the token form and the error panel's retry button. */
export function initPanels({ onToken, onRetry }) {
    $('auth-form').addEventListener('submit', (ev) => {
        ev.preventDefault();
        const value = $('auth-token').value.trim();
        if (value) onToken(value);
    });
    $('error-retry').addEventListener('click', () => onRetry());
}
