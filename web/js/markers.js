// Individual drivers at street zoom. Frames there carry
// "markers": [[driver_id, lat, lon, heading|null], ...] (docs/markers.md): exactly the
// drivers the heat counts in view. Each is drawn as a small arrow pointing along its
// heading (a dot when no heading was sent), named on hover, and glides from where it was
// drawn to its new position over about one frame interval, so movement reads as motion
// rather than as jumps. A marker appears and disappears with the frames.

// Glide over the time frames actually arrive apart (live: 1/LIVE_FPS while things move;
// replay: step/speed, at most REPLAY_MAX_FPS), within these bounds.
export const GLIDE_DEFAULT_MS = 500;
export const GLIDE_MIN_MS = 80;
export const GLIDE_MAX_MS = 1000;
// A frame this far (simulated time) from the last one, or earlier (a seek back), is a
// different moment, not the next step: markers jump there instead of crossing the city.
export const SNAP_GAP_MS = 60_000;

export const lerp = (a, b, f) => a + (b - a) * f;

/** Heading between a and b the short way round (350° → 10° passes 0°); null-safe. */
export function lerpHeading(a, b, f) {
    if (b === null || b === undefined) return null;
    if (a === null || a === undefined) return b;
    const delta = ((((b - a) % 360) + 540) % 360) - 180;
    return (((a + delta * f) % 360) + 360) % 360;
}

/** Progress 0..1 of a glide that started `elapsed` ms ago and lasts `duration` ms. */
export function glideFraction(elapsed, duration) {
    if (!(duration > 0)) return 1;
    return Math.min(1, Math.max(0, elapsed / duration));
}

/** A position part way from `from` to `to` ({lat, lon, heading}). */
export function interpolate(from, to, f) {
    if (f >= 1) return to; // land exactly on the frame's position, no rounding residue
    return {
        lat: lerp(from.lat, to.lat, f),
        lon: lerp(from.lon, to.lon, f),
        heading: lerpHeading(from.heading, to.heading, f),
    };
}

/** How long the next glide should take, from the arrival times (ms) of the last two frames. */
export function glideDuration(prevArrival, arrival) {
    if (!Number.isFinite(prevArrival) || !Number.isFinite(arrival) || arrival <= prevArrival) {
        return GLIDE_DEFAULT_MS;
    }
    return Math.min(GLIDE_MAX_MS, Math.max(GLIDE_MIN_MS, arrival - prevArrival));
}

/** True when a frame at simulated time t should not glide from the frame at prevT. */
export function shouldSnap(prevT, t) {
    if (!Number.isFinite(prevT) || !Number.isFinite(t)) return true;
    return t < prevT || t - prevT > SNAP_GAP_MS;
}

/**
 * The frame's markers as Map id → {lat, lon, heading}; malformed entries are skipped.
 * A frame without `markers` (heat only: zoomed out, or over the cap) gives an empty Map.
 */
export function parseMarkers(frame) {
    const out = new Map();
    const raw = frame && Array.isArray(frame.markers) ? frame.markers : [];
    for (const m of raw) {
        if (!Array.isArray(m) || m.length < 3) continue;
        const [id, lat, lon, heading] = m;
        if (typeof id !== 'string' || !id) continue;
        if (!Number.isFinite(lat) || !Number.isFinite(lon)) continue;
        const h = Number.isFinite(heading) ? heading : null;
        out.set(id, { lat, lon, heading: h });
    }
    return out;
}

/** Which ids enter, stay and leave between two frames. */
export function diffMarkers(previousIds, next) {
    const enter = [];
    const stay = [];
    const exit = [];
    for (const id of next.keys()) (previousIds.has(id) ? stay : enter).push(id);
    for (const id of previousIds) if (!next.has(id)) exit.push(id);
    return { enter, stay, exit };
}

// --- the follow panel's pure parts (js/follow.js) ---

/** "31.5 km/h" / "–" */
export function formatSpeed(kmh) {
    return Number.isFinite(kmh) ? `${Math.round(kmh * 10) / 10} km/h` : '–';
}

/** "270° (W)" / "–" */
export function formatHeading(deg) {
    if (!Number.isFinite(deg)) return '–';
    const names = ['N', 'NE', 'E', 'SE', 'S', 'SW', 'W', 'NW'];
    return `${Math.round(deg)}° (${names[Math.round(deg / 45) % 8]})`;
}

/** GeoJSON LineString/Point/null geometry → Leaflet [lat, lon] pairs. */
export function trailLatLngs(geometry) {
    if (!geometry) return [];
    if (geometry.type === 'LineString') return geometry.coordinates.map(([lon, lat]) => [lat, lon]);
    if (geometry.type === 'Point') return [[geometry.coordinates[1], geometry.coordinates[0]]];
    return [];
}

/**
 * The Leaflet layer. `onSelect(id)` is called when a marker is clicked.
 * @param {L.Map} map
 */
export function createMarkerLayer(map, { onSelect, now = () => performance.now() } = {}) {
    const layer = L.layerGroup().addTo(map);
    // id → {marker, from, to, shown, start, duration}
    const drawn = new Map();
    let lastArrival = NaN;
    let lastT = NaN;
    let raf = null;
    let selected = null;

    function icon(heading, id) {
        const arrow = heading === null
            ? '<span class="driver-dot"></span>'
            : `<span class="driver-arrow" style="transform: rotate(${heading.toFixed(1)}deg)"></span>`;
        return L.divIcon({
            className: `driver-marker${id === selected ? ' selected' : ''}`,
            html: arrow,
            iconSize: [20, 20],
            iconAnchor: [10, 10],
        });
    }

    function place(entry, pos) {
        entry.shown = pos;
        entry.marker.setLatLng([pos.lat, pos.lon]);
        const el = entry.marker.getElement();
        if (!el) return;
        const arrow = el.querySelector('.driver-arrow');
        if (arrow && pos.heading !== null) arrow.style.transform = `rotate(${pos.heading.toFixed(1)}deg)`;
    }

    function tick() {
        raf = null;
        const t = now();
        let moving = false;
        for (const entry of drawn.values()) {
            if (entry.start === null) continue;
            const f = glideFraction(t - entry.start, entry.duration);
            place(entry, interpolate(entry.from, entry.to, f));
            if (f < 1) moving = true;
            else entry.start = null;
        }
        if (moving) raf = requestAnimationFrame(tick);
    }

    function add(id, pos) {
        const marker = L.marker([pos.lat, pos.lon], {
            icon: icon(pos.heading, id),
            keyboard: false,
            riseOnHover: true,
        });
        marker.bindTooltip(id, { direction: 'top', offset: [0, -8] });
        marker.on('click', () => onSelect && onSelect(id));
        marker.on('add', () => {
            const el = marker.getElement();
            if (el) el.dataset.driver = id;
        });
        const entry = { marker, from: pos, to: pos, shown: pos, start: null, duration: 0 };
        drawn.set(id, entry);
        layer.addLayer(marker);
    }

    return {
        /** Draw a frame's markers; returns how many are on the map. */
        update(frame) {
            const next = parseMarkers(frame);
            const arrival = now();
            const t = Date.parse(frame && frame.t);
            const snap = shouldSnap(lastT, t);
            const duration = glideDuration(lastArrival, arrival);
            lastArrival = arrival;
            lastT = t;
            const { enter, stay, exit } = diffMarkers(new Set(drawn.keys()), next);
            for (const id of exit) {
                layer.removeLayer(drawn.get(id).marker);
                drawn.delete(id);
            }
            for (const id of enter) add(id, next.get(id));
            for (const id of stay) {
                const entry = drawn.get(id);
                const to = next.get(id);
                if ((entry.to.heading === null) !== (to.heading === null)) {
                    entry.marker.setIcon(icon(to.heading, id)); // dot ↔ arrow
                    entry.marker.getElement().dataset.driver = id;
                }
                if (snap) {
                    entry.start = null;
                    entry.to = to;
                    place(entry, to);
                } else {
                    entry.from = entry.shown; // from where it is drawn now: no jump mid-glide
                    entry.to = to;
                    entry.start = arrival;
                    entry.duration = duration;
                }
            }
            if (!snap && stay.length && raf === null) raf = requestAnimationFrame(tick);
            return drawn.size;
        },
        clear() {
            layer.clearLayers();
            drawn.clear();
            lastArrival = NaN;
            lastT = NaN;
        },
        select(id) {
            selected = id;
            for (const [key, entry] of drawn) {
                const el = entry.marker.getElement();
                if (el) el.classList.toggle('selected', key === id);
            }
        },
        /** Drawn markers, sorted by id: {id, lat, lon, heading, target: [lat, lon]}. */
        list() {
            return [...drawn.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([id, e]) => ({
                id, lat: e.shown.lat, lon: e.shown.lon, heading: e.shown.heading, target: [e.to.lat, e.to.lon],
            }));
        },
        get size() {
            return drawn.size;
        },
    };
}
