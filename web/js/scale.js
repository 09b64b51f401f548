// The one colour scale for every frame, live or replay, at every zoom.
//
// Colours come from fixed absolute thresholds of drivers per cell (log-like steps:
// 1, 2, 5, 10, 20, 50+), never from the frame's `max`. Renormalising per frame would
// make a quiet 3 a.m. look as hot as rush hour and make colours flicker as counts
// change; with a fixed scale a colour means the same number everywhere.
//
// Zoom: precision follows zoom (precision.js), so cell values are counts per cell at
// the current precision. We do not rescale by cell area: a cell with 20 drivers shows
// the 20+ colour whatever its size, which is exactly what the legend says.

export const THRESHOLDS = Object.freeze([1, 2, 5, 10, 20, 50]);

// Yellow → dark red (ColorBrewer YlOrRd), readable on light tiles and on the plain
// background shown when tiles cannot load.
export const COLOURS = Object.freeze(['#fed976', '#feb24c', '#fd8d3c', '#fc4e2a', '#e31a1c', '#800026']);

/** Index of the legend bin for a value, or -1 for zero/negative/invalid values. */
export function binFor(value) {
    if (!(value >= THRESHOLDS[0])) return -1;
    let bin = 0;
    for (let i = 0; i < THRESHOLDS.length; i++) {
        if (value >= THRESHOLDS[i]) bin = i;
    }
    return bin;
}

export function colourFor(value) {
    const bin = binFor(value);
    return bin < 0 ? 'transparent' : COLOURS[bin];
}

/** Legend rows: [{label, colour, from, to}] e.g. "2–4", "50+". */
export function legendRows() {
    return THRESHOLDS.map((from, i) => {
        const next = THRESHOLDS[i + 1];
        const to = next === undefined ? null : next - 1;
        const label = to === null ? `${from}+` : to === from ? `${from}` : `${from}–${to}`;
        return { label, colour: COLOURS[i], from, to };
    });
}

// Smooth-heat mapping. leaflet.heat draws each point with opacity value/max and
// colours pixels by that accumulated opacity through `gradient`. We fix max = 1 and
// feed it a fixed log mapping of the absolute count, so 1 driver → 0.5 and 50+
// drivers → 1.0 (the intensity is also the drawn opacity: seen in a browser, a lone
// driver at 0.3 was a faint smudge a person could miss, 0.5 reads as the legend's
// first colour); the gradient stops sit at the thresholds' intensities, so an
// isolated cell's centre takes its legend colour. (Neighbouring blobs add up where
// they overlap, so smooth heat reads a little hotter between busy cells; the grid
// style is the exact per-cell view.)
export const HEAT_MAX = 1;
const FLOOR = 0.5;
const TOP = THRESHOLDS[THRESHOLDS.length - 1];

export function intensityFor(value) {
    if (!(value >= 1)) return 0;
    const v = Math.min(value, TOP);
    return FLOOR + (1 - FLOOR) * (Math.log(v) / Math.log(TOP));
}

export const HEAT_GRADIENT = Object.freeze(
    Object.fromEntries([[0, COLOURS[0]], ...THRESHOLDS.map((t, i) => [intensityFor(t), COLOURS[i]])]),
);
