// Unit tests for the UI's pure modules: `npm test` in web/ (node's built-in runner).
import test from 'node:test';
import assert from 'node:assert/strict';

import { decodeBbox, decodeCentre, cellSizeDegrees } from '../js/geohash.js';
import { precisionForZoom, normaliseBbox, ZOOM_PRECISION } from '../js/precision.js';
import { binFor, colourFor, intensityFor, legendRows, THRESHOLDS, COLOURS } from '../js/scale.js';
import { parseTime, formatPeakLabel } from '../js/time.js';
import { backoffDelay, isAuthMessage, BACKOFF_MAX_MS } from '../js/socket.js';
import { timelineStep, distinctPeaks, peakSeparation } from '../js/timeline.js';

const close = (a, b, eps = 1e-9) => assert.ok(Math.abs(a - b) < eps, `${a} != ${b}`);

test('geohash decodes known cells', () => {
    // "s14" covers lon [2.8125, 4.21875], lat [5.625, 7.03125] (contains Lagos)
    const [w, s, e, n] = decodeBbox('s14');
    close(w, 2.8125); close(e, 4.21875); close(s, 5.625); close(n, 7.03125);
    const [lat, lon] = decodeCentre('s14');
    close(lat, 6.328125); close(lon, 3.515625);
    const [w6, s6, e6, n6] = decodeBbox('s14ws3');
    assert.ok(w6 < e6 && s6 < n6);
    const [dLon, dLat] = cellSizeDegrees(6);
    close(e6 - w6, dLon); close(n6 - s6, dLat);
});

test('geohash rejects bad input', () => {
    assert.throws(() => decodeBbox(''));
    assert.throws(() => decodeBbox('s1a')); // 'a' is not in the alphabet
});

test('precision table follows zoom', () => {
    const expect = { 3: 3, 8: 3, 9: 4, 10: 4, 11: 5, 12: 5, 13: 6, 14: 6, 15: 7, 16: 7, 17: 8, 19: 8 };
    for (const [z, p] of Object.entries(expect)) assert.equal(precisionForZoom(Number(z)), p, `zoom ${z}`);
    assert.equal(precisionForZoom(11.7), 5);
    assert.equal(ZOOM_PRECISION.at(-1).precision, 8);
});

test('bbox is clamped, capped and rounded', () => {
    assert.deepEqual(normaliseBbox([3.123456789, 6.1, 3.5, 6.7]), [3.12346, 6.1, 3.5, 6.7]);
    const [w, s, e, n] = normaliseBbox([-200, -95, 200, 95]);
    assert.ok(w >= -180 && e <= 180 && s >= -90 && n <= 90);
    assert.ok((e - w) * (n - s) <= 400);
});

test('colour scale is fixed and absolute', () => {
    assert.deepEqual(THRESHOLDS, [1, 2, 5, 10, 20, 50]);
    assert.equal(binFor(0), -1);
    assert.equal(binFor(1), 0);
    assert.equal(binFor(4), 1);
    assert.equal(binFor(5), 2);
    assert.equal(binFor(49), 4);
    assert.equal(binFor(5000), 5);
    assert.equal(colourFor(50), COLOURS[5]);
    assert.equal(colourFor(0), 'transparent');
    assert.deepEqual(legendRows().map((r) => r.label), ['1', '2–4', '5–9', '10–19', '20–49', '50+']);
    close(intensityFor(50), 1);
    close(intensityFor(500), 1);
    assert.ok(intensityFor(1) > 0 && intensityFor(2) > intensityFor(1));
});

test('times accept ISO and epoch ms', () => {
    assert.equal(parseTime('2026-11-20T17:00:00Z'), Date.UTC(2026, 10, 20, 17));
    assert.equal(parseTime(Date.UTC(2026, 10, 20, 17)), Date.UTC(2026, 10, 20, 17));
    assert.equal(parseTime(String(Date.UTC(2026, 10, 20, 17))), Date.UTC(2026, 10, 20, 17));
    assert.equal(parseTime(1795194000), 1795194000000); // seconds, tolerated
    assert.ok(Number.isNaN(parseTime('nope')));
    assert.match(formatPeakLabel(0, 3600e3, 12345), /^\w{3} \d\d:00–\d\d:00 · 12,345 pings$/);
});

test('backoff doubles with jitter up to 10 s', () => {
    assert.equal(backoffDelay(0, () => 1), 500);
    assert.equal(backoffDelay(0, () => 0), 250);
    assert.equal(backoffDelay(1, () => 1), 1000);
    assert.equal(backoffDelay(20, () => 1), BACKOFF_MAX_MS);
});

test('auth errors are recognised', () => {
    assert.ok(isAuthMessage({ type: 'error', error: 'unauthorized', message: 'bad token' }));
    assert.ok(isAuthMessage({ type: 'error', error: 'forbidden' }));
    assert.ok(!isAuthMessage({ type: 'error', error: 'bad_message', message: 'unknown op' }));
});

test('timeline step: 60 s (the rollup-served step) up to a week, then bounded bars', () => {
    assert.equal(timelineStep(0, 3600e3), 60);
    assert.equal(timelineStep(0, 86400e3), 60);
    assert.equal(timelineStep(0, 7 * 86400e3), 60);
    for (const days of [8, 31, 365]) {
        const step = timelineStep(0, days * 86400e3);
        assert.equal(step % 60, 0);
        assert.ok((days * 86400) / step <= 720);
    }
});

test('peaks shown are distinct rushes, not three hours of one evening', () => {
    const h = 3600e3;
    // the server's busiest non-overlapping hours of a simulated day, busiest first
    const m = 60e3;
    const ranked = ['18:23', '17:23', '19:23', '07:38', '08:38', '16:23', '20:23', '09:38', '15:23', '06:00']
        .map((hm) => (Number(hm.slice(0, 2)) * 60 + Number(hm.slice(3))) * m)
        .map((start, i) => ({ start, end: start + h, pings: 100 - i, drivers: 1 }));
    const sep = peakSeparation(0, 24 * h, h);
    assert.equal(sep, 3 * h);
    const hhmm = (p) => `${String(Math.floor(p.start / h)).padStart(2, '0')}:${String((p.start % h) / m).padStart(2, '0')}`;
    assert.deepEqual(distinctPeaks(ranked, sep, 3).map(hhmm), ['18:23', '07:38', '15:23']);
    // short ranges: only the server's non-overlap rule (separation = the window)
    assert.equal(peakSeparation(0, 4 * h, h), h);
    assert.deepEqual(distinctPeaks(ranked.slice(0, 3), peakSeparation(0, 4 * h, h), 3).length, 3);
});
