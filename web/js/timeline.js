// The activity strip under the replay controls: pings per step as bars, distinct
// drivers as a line, peak windows as numbered bands, the replayed span and the
// current replay time as a cursor. Drawn on a <canvas>; redrawn on resize.

import { parseTime, formatTimeOfDay, formatCount } from './time.js';

const COLOURS = {
    background: '#f4f1ea',
    bars: '#c9a46b',
    drivers: '#5b3a8c',
    peak: 'rgba(227, 26, 28, 0.16)',
    peakEdge: 'rgba(227, 26, 28, 0.7)',
    session: 'rgba(30, 90, 160, 0.12)',
    cursor: '#1e5aa0',
    axis: '#6b6459',
};

// Timeline bucket: the contract's 60 s for ranges up to a week. The server answers
// 60 s steps from its per-minute rollup (~10 ms a day of history); a coarser step has
// to count distinct drivers over per-driver minutes (0.6–1 s a day), so coarser steps
// are only for longer ranges, kept to ~720 bars. Always a multiple of 60 s.
const STEP_CHOICES = [60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400];
const MINUTE_STEPS_UP_TO_S = 7 * 86400;
export function timelineStep(fromMs, toMs) {
    const seconds = (toMs - fromMs) / 1000;
    if (seconds <= MINUTE_STEPS_UP_TO_S) return 60;
    return STEP_CHOICES.find((s) => seconds / s <= 720) || STEP_CHOICES[STEP_CHOICES.length - 1];
}

/** Normalise timeline points [[t, pings, drivers], ...] → [{t, pings, drivers}] sorted by t. */
export function normalisePoints(points) {
    if (!Array.isArray(points)) return [];
    return points
        .map((p) => (Array.isArray(p)
            ? { t: parseTime(p[0]), pings: Number(p[1]) || 0, drivers: Number(p[2]) || 0 }
            : { t: parseTime(p && p.t), pings: Number(p && p.pings) || 0, drivers: Number(p && p.drivers) || 0 }))
        .filter((p) => Number.isFinite(p.t))
        .sort((a, b) => a.t - b.t);
}

/** Normalise peaks [{start, end, pings, drivers}] with times as epoch ms. */
export function normalisePeaks(peaks) {
    const list = Array.isArray(peaks) ? peaks : (peaks && Array.isArray(peaks.peaks) ? peaks.peaks : []);
    return list
        .map((p) => ({
            start: parseTime(p.start),
            end: parseTime(p.end),
            pings: Number(p.pings) || 0,
            drivers: Number(p.drivers) || 0,
        }))
        .filter((p) => Number.isFinite(p.start) && Number.isFinite(p.end) && p.end > p.start);
}

// The busiest non-overlapping hours of a day are usually three hours of the same
// evening rush (seen with `heatreplay simulate --backfill 24h`: 17:23, 18:23, 19:23),
// which hides the morning rush. So the page asks the server for more windows than it
// shows and keeps the busiest ones that are far enough apart to be different rushes:
// starts at least PEAK_SEPARATION_MAX_MS apart on a day, less on short ranges (never
// less than the window itself, which is the server's own non-overlap rule).
export const PEAK_CANDIDATES = 12;
export const PEAK_SEPARATION_MAX_MS = 3 * 3600e3;

export function peakSeparation(fromMs, toMs, windowMs) {
    return Math.max(windowMs, Math.min(PEAK_SEPARATION_MAX_MS, (toMs - fromMs) / 8));
}

/** Peaks (busiest first) whose starts are at least `separationMs` apart; at most `count`. */
export function distinctPeaks(peaks, separationMs, count) {
    const kept = [];
    for (const p of peaks) {
        if (kept.length >= count) break;
        if (kept.every((k) => Math.abs(k.start - p.start) >= separationMs)) kept.push(p);
    }
    return kept;
}

/**
 * @param {HTMLCanvasElement} canvas
 * @param {(tMs: number) => void} onPick  click on the strip
 */
export function createTimeline(canvas, onPick) {
    const ctx = canvas.getContext('2d');
    let data = { from: NaN, to: NaN, step: 60, points: [], peaks: [] };
    let session = null; // {from, to}
    let cursor = NaN;
    let frameRequested = false;

    const xFor = (t, width) => ((t - data.from) / (data.to - data.from)) * width;
    const tFor = (x, width) => data.from + (x / width) * (data.to - data.from);

    function draw() {
        frameRequested = false;
        const dpr = window.devicePixelRatio || 1;
        const width = canvas.clientWidth;
        const height = canvas.clientHeight;
        if (!width || !height) return;
        if (canvas.width !== Math.round(width * dpr) || canvas.height !== Math.round(height * dpr)) {
            canvas.width = Math.round(width * dpr);
            canvas.height = Math.round(height * dpr);
        }
        ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
        ctx.fillStyle = COLOURS.background;
        ctx.fillRect(0, 0, width, height);
        if (!(data.to > data.from)) return;

        const axisH = 14;
        const plotH = height - axisH;

        if (session) {
            ctx.fillStyle = COLOURS.session;
            const x0 = xFor(session.from, width);
            ctx.fillRect(x0, 0, xFor(session.to, width) - x0, plotH);
        }

        const maxPings = Math.max(1, ...data.points.map((p) => p.pings));
        const maxDrivers = Math.max(1, ...data.points.map((p) => p.drivers));
        const stepMs = data.step * 1000;
        const barW = Math.max(1, (stepMs / (data.to - data.from)) * width - 0.5);
        ctx.fillStyle = COLOURS.bars;
        for (const p of data.points) {
            const h = (p.pings / maxPings) * (plotH - 4);
            ctx.fillRect(xFor(p.t, width), plotH - h, barW, h);
        }

        if (data.points.length > 1) {
            ctx.strokeStyle = COLOURS.drivers;
            ctx.lineWidth = 1.25;
            ctx.beginPath();
            data.points.forEach((p, i) => {
                const x = xFor(p.t, width) + barW / 2;
                const y = plotH - (p.drivers / maxDrivers) * (plotH - 4);
                if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
            });
            ctx.stroke();
        }

        ctx.font = '11px system-ui, sans-serif';
        data.peaks.forEach((p, i) => {
            const x0 = xFor(p.start, width);
            const x1 = xFor(p.end, width);
            ctx.fillStyle = COLOURS.peak;
            ctx.fillRect(x0, 0, Math.max(2, x1 - x0), plotH);
            ctx.fillStyle = COLOURS.peakEdge;
            ctx.fillRect(x0, 0, 1, plotH);
            ctx.fillText(String(i + 1), x0 + 3, 11);
        });

        // Axis: up to ~8 labels at whole hours (or days for long ranges).
        ctx.fillStyle = COLOURS.axis;
        ctx.fillRect(0, plotH, width, 1);
        const span = data.to - data.from;
        const tickChoices = [3600e3, 2 * 3600e3, 3 * 3600e3, 6 * 3600e3, 12 * 3600e3, 86400e3, 7 * 86400e3];
        const tick = tickChoices.find((c) => span / c <= 8) || tickChoices[tickChoices.length - 1];
        const tzOffset = new Date(data.from).getTimezoneOffset() * 60e3;
        let t = Math.ceil((data.from - tzOffset) / tick) * tick + tzOffset;
        for (; t <= data.to; t += tick) {
            const x = xFor(t, width);
            ctx.fillRect(x, plotH, 1, 4);
            const d = new Date(t);
            const label = tick >= 86400e3 ? `${d.getDate()}/${d.getMonth() + 1}` : formatTimeOfDay(t).slice(0, 5);
            ctx.fillText(label, Math.min(Math.max(0, x - 14), width - 30), height - 2);
        }

        if (Number.isFinite(cursor) && cursor >= data.from && cursor <= data.to) {
            const x = xFor(cursor, width);
            ctx.fillStyle = COLOURS.cursor;
            ctx.fillRect(x - 1, 0, 2, plotH);
        }
    }

    function requestDraw() {
        if (!frameRequested) {
            frameRequested = true;
            requestAnimationFrame(draw);
        }
    }

    canvas.addEventListener('click', (ev) => {
        if (!(data.to > data.from)) return;
        const rect = canvas.getBoundingClientRect();
        onPick(Math.round(tFor(ev.clientX - rect.left, rect.width)));
    });
    canvas.addEventListener('mousemove', (ev) => {
        if (!(data.to > data.from)) return;
        const rect = canvas.getBoundingClientRect();
        const t = tFor(ev.clientX - rect.left, rect.width);
        const stepMs = data.step * 1000;
        const p = data.points.find((q) => t >= q.t && t < q.t + stepMs);
        canvas.title = `${new Date(t).toLocaleString('en-GB')}${p ? ` · ${formatCount(p.pings)} pings, ${formatCount(p.drivers)} drivers` : ''} — click to replay from here`;
    });
    new ResizeObserver(requestDraw).observe(canvas);

    return {
        /** New strip data; from/to in epoch ms, step in seconds. */
        setData({ from, to, step, points, peaks }) {
            data = { from, to, step: Number(step) || 60, points: normalisePoints(points), peaks: peaks || [] };
            requestDraw();
        },
        setSession(s) {
            session = s;
            requestDraw();
        },
        setCursor(t) {
            if (t !== cursor) {
                cursor = t;
                requestDraw();
            }
        },
        get range() {
            return { from: data.from, to: data.to };
        },
        draw,
    };
}
