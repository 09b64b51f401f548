// Draws a frame on the map, as smooth heat (leaflet.heat) or as a grid of exact
// geohash rectangles. Both use the fixed scale from scale.js, so switching style
// or zoom never changes what a colour means.

import { decodeBbox, decodeCentre, cellSizeDegrees } from './geohash.js';
import { colourFor, intensityFor, binFor, HEAT_GRADIENT, HEAT_MAX } from './scale.js';

export const STYLES = Object.freeze(['heat', 'grid']);

/**
 * @param {L.Map} map
 * @returns {{render(frame): object, clear(): void, setStyle(style): void, style: string}}
 */
export function createHeatRenderer(map) {
    let style = 'heat';
    let cells = []; // [[geohash, value], ...] of the frame on screen, validated
    let precision = null;

    // maxZoom: 0 turns off leaflet.heat's own zoom scaling (it multiplies every
    // intensity by 1/2^(maxZoom − zoom)); with 0 that factor is always 1, so the
    // intensity we pass is the one drawn at every zoom. max is fixed (HEAT_MAX).
    const heat = L.heatLayer([], {
        max: HEAT_MAX,
        maxZoom: 0,
        minOpacity: 0.05,
        radius: 25,
        blur: 20,
        gradient: HEAT_GRADIENT,
    });

    // One canvas for all rectangles: thousands of SVG paths would be slow.
    const gridRenderer = L.canvas({ padding: 0.3 });
    const grid = L.layerGroup();
    const rects = new Map(); // geohash → L.Rectangle, reused between frames

    heat.addTo(map);
    map.on('zoomend', () => fitHeatRadius());

    // The blob should cover about one cell: its pixel size depends on the frame's
    // precision and the current zoom. Clamped so blobs stay visible and cheap.
    function fitHeatRadius() {
        if (precision === null) return;
        const [dLon, dLat] = cellSizeDegrees(precision);
        const c = map.getCenter();
        const a = map.latLngToContainerPoint([c.lat, c.lng]);
        const b = map.latLngToContainerPoint([c.lat + dLat, c.lng + dLon]);
        const px = Math.sqrt(Math.abs(b.x - a.x) * Math.abs(b.y - a.y));
        const radius = Math.round(Math.min(50, Math.max(8, px * 0.55)));
        if (radius !== heat.options.radius) {
            heat.setOptions({ radius, blur: Math.round(radius * 0.8) });
        }
    }

    function drawHeat() {
        const points = [];
        for (const [gh, value] of cells) {
            const [lat, lon] = decodeCentre(gh);
            points.push([lat, lon, intensityFor(value)]);
        }
        heat._latlngs = points;
        // Draw now rather than on the next animation frame (setLatLngs' way), so the
        // data-* attributes set right after render() describe pixels already drawn.
        // Mid zoom-animation leaflet.heat skips drawing; its moveend redraw follows.
        if (heat._map && heat._heat && !map._animating) heat._redraw();
        else heat.redraw();
    }

    function drawGrid() {
        const seen = new Set();
        for (const [gh, value] of cells) {
            seen.add(gh);
            const colour = colourFor(value);
            let rect = rects.get(gh);
            if (!rect) {
                const [w, s, e, n] = decodeBbox(gh);
                rect = L.rectangle([[s, w], [n, e]], {
                    renderer: gridRenderer,
                    weight: 0.5,
                    color: '#5a2a10',
                    opacity: 0.35,
                    fillColor: colour,
                    fillOpacity: 0.72,
                });
                rect.heatValue = value;
                rect.heatCell = gh;
                rect.bindTooltip(() => `${rect.heatCell}: ${rect.heatValue} driver${rect.heatValue === 1 ? '' : 's'}`,
                    { sticky: true });
                rects.set(gh, rect);
                grid.addLayer(rect);
            } else if (rect.heatValue !== value) {
                if (binFor(rect.heatValue) !== binFor(value)) rect.setStyle({ fillColor: colour });
                rect.heatValue = value;
            }
        }
        for (const [gh, rect] of rects) {
            if (!seen.has(gh)) {
                grid.removeLayer(rect);
                rects.delete(gh);
            }
        }
    }

    function clearGrid() {
        grid.clearLayers();
        rects.clear();
    }

    function draw() {
        if (style === 'heat') {
            drawHeat();
        } else {
            drawGrid();
        }
    }

    return {
        get style() {
            return style;
        },

        /**
         * Draw a frame. Returns what was drawn: {precision, total, cells, max, t}.
         * Cells with a bad geohash or a non-positive value are skipped, not fatal.
         */
        render(frame) {
            const raw = Array.isArray(frame && frame.cells) ? frame.cells : [];
            const valid = [];
            let sum = 0;
            let max = 0;
            for (const cell of raw) {
                if (!Array.isArray(cell) || cell.length < 2) continue;
                const gh = String(cell[0]);
                const value = Number(cell[1]);
                if (!(value > 0)) continue;
                try {
                    decodeBbox(gh);
                } catch {
                    continue;
                }
                valid.push([gh, value]);
                sum += value;
                if (value > max) max = value;
            }
            cells = valid;
            const p = Number(frame && frame.precision);
            const newPrecision = Number.isInteger(p) && p >= 1 && p <= 12
                ? p
                : (valid.length ? valid[0][0].length : precision);
            if (newPrecision !== precision) {
                precision = newPrecision;
                fitHeatRadius();
                clearGrid(); // different cell size: no rectangle can be reused
            }
            draw();
            return {
                precision,
                total: Number.isFinite(Number(frame && frame.total)) ? Number(frame.total) : sum,
                cells: valid.length,
                max: Number.isFinite(Number(frame && frame.max)) ? Number(frame.max) : max,
                t: frame && frame.t !== undefined ? frame.t : '',
            };
        },

        clear() {
            cells = [];
            clearGrid();
            heat._latlngs = [];
            // leaflet.heat's redraw() dereferences its map, which is null while the
            // grid style has it off the map.
            if (heat._map) heat.redraw();
        },

        setStyle(next) {
            if (!STYLES.includes(next) || next === style) return;
            style = next;
            if (style === 'heat') {
                clearGrid();
                map.removeLayer(grid);
                heat.addTo(map);
            } else {
                map.removeLayer(heat);
                grid.addTo(map);
            }
            draw();
        },
    };
}
