/*
 * heatreplay web UI — entry point: builds the map and switches Live ↔ Replay.
 *
 * Page URL parameters
 *   token   viewer JWT; sent as "Authorization: Bearer" to api/* and as ?token= to ws/*
 *   tiles   base-map tile URL template (default: OSM); "none" shows no base map
 *   mode    "live" (default) or "replay"
 *   style   "heat" (default) or "grid"
 *   from,to initial replay range (ISO-8601 or epoch ms; default: the last 24 h)
 *
 * Drawn state for browser tests: attributes on #heat-state, set right after a frame
 * has been drawn (the heat canvas is painted synchronously, not on a later tick).
 *   data-mode       "live" | "replay"                        (also on <body>)
 *   data-state      connecting | live | reconnecting | error | unauthorised |
 *                   replaying | paused | ended | idle        (also on <body>)
 *                   idle = replay mode with nothing playing yet
 *   data-style      "heat" | "grid"
 *   data-precision  precision of the drawn frame
 *   data-total      the frame's total (drivers in view)
 *   data-cells      cells drawn
 *   data-max        the frame's max
 *   data-t          the frame's t, as the server sent it
 *   data-frames     frames drawn since the current mode was entered (reset on switch)
 *   data-markers    drivers drawn as markers (frames carry them at street zoom)
 *
 * #driver-panel (follow a driver, opened by clicking a marker): data-driver, data-speed,
 * data-last-seen, data-trail-points (points of the trail line drawn), data-loading.
 *
 * Hooks on window.heatreplay (for tests and the console)
 *   renderFrame(frame)  draw a frame exactly as if a socket had delivered it
 *   setMode("live"|"replay"), mode, setStyle("heat"|"grid"), view() → {precision, bbox}
 *   state() → copy of #heat-state's data attributes
 *   map, live, replay, precisionForZoom, ZOOM_PRECISION, decodeBbox, decodeCentre
 *   markers() → ids of the drawn markers, sorted; markerState() → [{id, lat, lon,
 *   heading, target}] (target: where a gliding marker is heading); follow(id) opens the
 *   driver panel as a click does; followed() → its driver; trail() → [[lat, lon], ...]
 */

import { setToken } from './js/api.js';
import { decodeBbox, decodeCentre } from './js/geohash.js';
import { createHeatRenderer, STYLES } from './js/heat.js';
import { createFollow } from './js/follow.js';
import { createLive } from './js/live.js';
import { createMarkerLayer } from './js/markers.js';
import { precisionForZoom, viewForMap, ZOOM_PRECISION } from './js/precision.js';
import { createReplay } from './js/replay.js';
import { legendRows } from './js/scale.js';
import { parseTime } from './js/time.js';
import * as ui from './js/ui.js';

const LAGOS = [6.5244, 3.3792];
const START_ZOOM = 11;
const DEFAULT_TILES = 'https://tile.openstreetmap.org/{z}/{x}/{y}.png';
const VIEW_DEBOUNCE_MS = 120;

const params = new URLSearchParams(window.location.search);

// minZoom 7 (about Nigeria on one screen): further out, the view would pass the
// server's bbox area limit and the cells would be too coarse to say anything.
const map = L.map('map', { center: LAGOS, zoom: START_ZOOM, minZoom: 7, maxZoom: 19 });

const tilesUrl = params.has('tiles') ? params.get('tiles') : DEFAULT_TILES;
if (tilesUrl && tilesUrl !== 'none') {
    const tiles = L.tileLayer(tilesUrl, {
        maxZoom: 19,
        attribution: tilesUrl === DEFAULT_TILES ? '&copy; OpenStreetMap contributors' : '',
    });
    // Offline is a normal place to run this; say so once instead of failing silently.
    tiles.once('tileerror', () => {
        document.getElementById('tiles-note').hidden = false;
    });
    tiles.addTo(map);
}

const renderer = createHeatRenderer(map);
let mode = null;
let frames = 0;
let frameTime = '';

const follow = createFollow({
    map,
    getMode: () => mode,
    getFrameTime: () => frameTime,
    onSelect: (id) => markerLayer.select(id),
});
const markerLayer = createMarkerLayer(map, { onSelect: (id) => follow.select(id) });

function renderFrame(frame) {
    const summary = renderer.render(frame);
    summary.markers = markerLayer.update(frame);
    frameTime = summary.t;
    follow.onFrame();
    frames += 1;
    if (mode === 'replay') ui.setClock(parseTime(summary.t));
    ui.setDrawn(summary, frames);
    return summary;
}

const view = () => viewForMap(map);

const live = createLive({
    getView: view,
    onFrame: (frame) => { if (mode === 'live') renderFrame(frame); },
    onState: (state, detail) => { if (mode === 'live') ui.setState(state, detail); },
    onServerError: (message) => ui.showToast(message),
});

const replay = createReplay({
    getView: view,
    onFrame: (frame) => { if (mode === 'replay') renderFrame(frame); },
    onState: (state, detail) => { if (mode === 'replay') ui.setState(state, detail); },
    onServerError: (message) => ui.showToast(message),
    onAuthError: (err) => ui.setState('unauthorised', err.message),
    setClock: (t) => { if (mode === 'replay') ui.setClock(t); },
});

function setMode(next) {
    if (next !== 'live' && next !== 'replay') throw new Error(`unknown mode: ${next}`);
    if (next === mode) return;
    if (mode === 'live') live.stop();
    if (mode === 'replay') replay.stop();
    mode = next;
    frames = 0;
    frameTime = '';
    renderer.clear();
    markerLayer.clear();
    follow.close();
    ui.resetDrawn();
    ui.setClock(NaN);
    ui.setMode(mode);
    document.getElementById('replay-panel').hidden = mode !== 'replay';
    document.getElementById('clock').hidden = mode !== 'replay';
    for (const m of ['live', 'replay']) {
        document.getElementById(`mode-${m}`).setAttribute('aria-pressed', String(m === mode));
    }
    map.invalidateSize({ pan: false });
    lastSentView = JSON.stringify(view());
    if (mode === 'live') live.start();
    else replay.start();
}

function setStyle(next) {
    if (!STYLES.includes(next)) throw new Error(`unknown style: ${next}`);
    renderer.setStyle(next);
    ui.setStyleAttr(next);
    const radio = document.querySelector(`input[name="draw-style"][value="${next}"]`);
    if (radio) radio.checked = true;
}

// Follow pan and zoom on the open socket. moveend also fires after a zoom, so one
// debounced handler covers both; unchanged views are not re-sent.
let lastSentView = '';
let viewTimer = null;
function viewChanged() {
    showPrecision();
    clearTimeout(viewTimer);
    viewTimer = setTimeout(() => {
        const v = view();
        const key = JSON.stringify(v);
        if (key === lastSentView) return;
        lastSentView = key;
        if (mode === 'live') live.setView(v);
        else if (mode === 'replay') replay.setView(v);
    }, VIEW_DEBOUNCE_MS);
}
map.on('moveend zoomend', viewChanged);

function showPrecision() {
    document.getElementById('precision-note').textContent =
        `Zoom ${map.getZoom()} · geohash precision ${precisionForZoom(map.getZoom())}`;
}

function restart() {
    if (mode === 'live') live.start();
    else replay.restart();
}

// Legend: the fixed scale.
document.getElementById('legend-scale').replaceChildren(...legendRows().map((row) => {
    const li = document.createElement('li');
    const swatch = document.createElement('span');
    swatch.className = 'swatch';
    swatch.style.background = row.colour;
    li.append(swatch, row.label);
    return li;
}));

document.getElementById('mode-live').addEventListener('click', () => setMode('live'));
document.getElementById('mode-replay').addEventListener('click', () => setMode('replay'));
for (const radio of document.querySelectorAll('input[name="draw-style"]')) {
    radio.addEventListener('change', () => { if (radio.checked) setStyle(radio.value); });
}
ui.initPanels({
    onToken(value) {
        setToken(value);
        restart();
    },
    onRetry: restart,
});

window.heatreplay = {
    renderFrame,
    setMode,
    get mode() { return mode; },
    setStyle,
    view,
    state: () => ({ ...document.getElementById('heat-state').dataset }),
    map,
    live,
    replay,
    precisionForZoom,
    ZOOM_PRECISION,
    decodeBbox,
    decodeCentre,
    markers: () => markerLayer.list().map((m) => m.id),
    markerState: () => markerLayer.list(),
    follow: (id) => follow.select(id),
    followed: () => follow.driver,
    trail: () => follow.trailPoints(),
};

showPrecision();
setStyle(STYLES.includes(params.get('style')) ? params.get('style') : 'heat');
setMode(params.get('mode') === 'replay' ? 'replay' : 'live');
