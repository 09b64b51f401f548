// Which geohash precision the UI asks for at each map zoom.
//
// Why this table: one geohash character shrinks a cell 4–8× per side (lon and lat
// alternate), while two zoom levels enlarge the map 4×. Stepping precision every
// two zooms keeps a cell roughly 16–256 px across near Lagos: big enough to read,
// small enough that a city view needs hundreds of cells, not tens of thousands.
//
//   zoom  ≤ 8  → 3   (~156 km cells, country view)
//   zoom 9–10  → 4   (~39 × 20 km)
//   zoom 11–12 → 5   (~4.9 km, the default Lagos view)
//   zoom 13–14 → 6   (~1.2 × 0.6 km)
//   zoom 15–16 → 7   (~153 m)
//   zoom ≥ 17  → 8   (~38 × 19 m)
export const ZOOM_PRECISION = Object.freeze([
    Object.freeze({ maxZoom: 8, precision: 3 }),
    Object.freeze({ maxZoom: 10, precision: 4 }),
    Object.freeze({ maxZoom: 12, precision: 5 }),
    Object.freeze({ maxZoom: 14, precision: 6 }),
    Object.freeze({ maxZoom: 16, precision: 7 }),
    Object.freeze({ maxZoom: Infinity, precision: 8 }),
]);

/** Geohash precision (3–8) for a Leaflet zoom level (fractional zooms round down). */
export function precisionForZoom(zoom) {
    const z = Math.floor(Number(zoom));
    for (const row of ZOOM_PRECISION) {
        if (z <= row.maxZoom) return row.precision;
    }
    return ZOOM_PRECISION[ZOOM_PRECISION.length - 1].precision;
}

// The server refuses a view larger than MAX_BBOX_AREA_DEG2 (its default; a wide
// screen zoomed out can show more). Such a view is shrunk around its centre rather
// than refused: the fleet is in Lagos, the edges of a huge view hold nothing.
export const MAX_BBOX_AREA_DEG2 = 400;

const round5 = (x) => Math.round(x * 1e5) / 1e5;
const clamp = (x, lo, hi) => Math.min(hi, Math.max(lo, x));

/** [w, s, e, n] clamped to valid lon/lat, capped in area, rounded to 5 decimals (~1 m). */
export function normaliseBbox([west, south, east, north], maxArea = MAX_BBOX_AREA_DEG2) {
    let w = clamp(west, -180, 180);
    let s = clamp(south, -90, 90);
    let e = clamp(east, -180, 180);
    let n = clamp(north, -90, 90);
    const area = (e - w) * (n - s);
    if (area > maxArea) {
        const k = Math.sqrt((maxArea * 0.98) / area); // margin for rounding
        const cx = (w + e) / 2;
        const cy = (s + n) / 2;
        const hw = ((e - w) * k) / 2;
        const hh = ((n - s) * k) / 2;
        [w, s, e, n] = [cx - hw, cy - hh, cx + hw, cy + hh];
    }
    return [round5(w), round5(s), round5(e), round5(n)];
}

/**
 * The view a socket should serve: precision from the zoom and the visible bounds
 * as [west, south, east, north]. Leaflet reports bounds past ±180 when the world
 * wraps, hence the clamping in normaliseBbox.
 */
export function viewForMap(map) {
    const b = map.getBounds();
    return {
        precision: precisionForZoom(map.getZoom()),
        bbox: normaliseBbox([b.getWest(), b.getSouth(), b.getEast(), b.getNorth()]),
    };
}
