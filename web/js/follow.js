// Follow a driver: clicking a marker opens a panel with the driver's id, speed, heading
// and last-seen time (GET api/drivers/<id>, live or at the replay frame's t) and draws
// its trail as a line (GET api/analytics/drivers/<id>/path over the range the first
// answer names: the last N minutes live, [t − N min, t] in replay). While the panel is
// open it follows the frames, at most once per REFRESH_MS.

import { apiGet, ApiError, AuthError } from './api.js';
import { formatHeading, formatSpeed, trailLatLngs } from './markers.js';
import { formatTimeOfDay, parseTime } from './time.js';

export const TRAIL_MINUTES = 10;
export const REFRESH_MS = 2000;

const $ = (id) => document.getElementById(id);

/**
 * @param {object} o
 * @param {L.Map} o.map
 * @param {() => string|null} o.getMode       'live' | 'replay'
 * @param {() => string} o.getFrameTime        the t of the frame on screen (replay)
 * @param {(id: string|null) => void} o.onSelect  highlight the marker
 */
export function createFollow({ map, getMode, getFrameTime, onSelect }) {
    const panel = $('driver-panel');
    const trail = L.polyline([], { color: '#1e5aa0', weight: 4, opacity: 0.8, interactive: false });
    let driver = null;
    let seq = 0; // answers to an older request are dropped
    let lastLoad = -Infinity;
    let trailing = null; // a load for the newest frame, once REFRESH_MS has passed

    function show(fields) {
        for (const [key, value] of Object.entries(fields)) $(`driver-${key}`).textContent = value;
    }

    async function load() {
        if (!driver) return;
        const id = driver;
        const mine = ++seq;
        lastLoad = performance.now();
        const query = { trail_minutes: TRAIL_MINUTES };
        if (getMode() === 'replay') query.t = getFrameTime();
        panel.dataset.loading = 'true';
        try {
            const info = await apiGet(`api/drivers/${encodeURIComponent(id)}`, query);
            if (mine !== seq) return;
            const seen = parseTime(info.last_seen);
            show({
                speed: formatSpeed(info.speed_kmh),
                heading: formatHeading(info.heading),
                seen: Number.isFinite(seen) ? formatTimeOfDay(seen) : '–',
                note: '',
            });
            $('driver-seen').title = info.last_seen || '';
            panel.dataset.speed = info.speed_kmh ?? '';
            panel.dataset.lastSeen = info.last_seen || '';
            const path = await apiGet(info.trail.path);
            if (mine !== seq) return;
            const points = trailLatLngs(path.geometry);
            trail.setLatLngs(points);
            panel.dataset.trailPoints = String(points.length);
            $('driver-trail').textContent = `${points.length} ping${points.length === 1 ? '' : 's'}`
                + ` in ${info.trail.minutes} min`
                + (path.properties && path.properties.distance_m
                    ? ` · ${(path.properties.distance_m / 1000).toFixed(2)} km` : '');
        } catch (err) {
            if (mine !== seq) return;
            if (err instanceof ApiError && err.status === 404) {
                show({ speed: '–', heading: '–', seen: '–', note: 'Not on the map at this time.' });
            } else {
                show({ note: err instanceof AuthError ? 'Not authorised.' : `Could not load: ${err.message}` });
            }
            trail.setLatLngs([]);
            panel.dataset.trailPoints = '0';
        } finally {
            if (mine === seq) panel.dataset.loading = 'false';
        }
    }

    function close() {
        clearTimeout(trailing);
        trailing = null;
        driver = null;
        seq += 1;
        panel.hidden = true;
        delete panel.dataset.driver;
        trail.remove();
        trail.setLatLngs([]);
        onSelect(null);
    }

    $('driver-close').addEventListener('click', close);

    return {
        /** Open the panel on a driver (a marker was clicked). */
        select(id) {
            driver = id;
            panel.hidden = false;
            panel.dataset.driver = id;
            panel.dataset.trailPoints = '';
            $('driver-id').textContent = id;
            show({ speed: '…', heading: '…', seen: '…', note: '', trail: '…' });
            trail.setLatLngs([]);
            trail.addTo(map);
            onSelect(id);
            load();
        },
        /** A frame was drawn: follow it, not more often than REFRESH_MS; the last frame
         * of a burst (a pause, steps) is loaded once the interval has passed. */
        onFrame() {
            if (!driver) return;
            const wait = lastLoad + REFRESH_MS - performance.now();
            clearTimeout(trailing);
            trailing = null;
            if (wait <= 0) load();
            else trailing = setTimeout(() => { trailing = null; load(); }, wait);
        },
        close,
        get driver() {
            return driver;
        },
        trailPoints: () => trail.getLatLngs().map((p) => [p.lat, p.lng]),
    };
}
