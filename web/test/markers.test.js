// Unit tests of the markers' pure parts (js/markers.js): interpolation, glide timing,
// snapping, parsing and diffing frames, the follow panel's formatting.
import test from 'node:test';
import assert from 'node:assert/strict';

import {
    diffMarkers, formatHeading, formatSpeed, glideDuration, glideFraction, interpolate,
    lerpHeading, parseMarkers, shouldSnap, trailLatLngs,
    GLIDE_DEFAULT_MS, GLIDE_MAX_MS, GLIDE_MIN_MS, SNAP_GAP_MS,
} from '../js/markers.js';

const close = (a, b, eps = 1e-9) => assert.ok(Math.abs(a - b) < eps, `${a} != ${b}`);

test('positions glide linearly from the drawn position to the new one', () => {
    const from = { lat: 6.5, lon: 3.3, heading: 90 };
    const to = { lat: 6.6, lon: 3.5, heading: 180 };
    assert.deepEqual(interpolate(from, to, 0), from);
    assert.deepEqual(interpolate(from, to, 1), to);
    const mid = interpolate(from, to, 0.25);
    close(mid.lat, 6.525); close(mid.lon, 3.35); close(mid.heading, 112.5);
});

test('headings turn the short way round and tolerate a missing heading', () => {
    close(lerpHeading(350, 10, 0.5), 0);
    close(lerpHeading(350, 10, 0.25), 355);
    close(lerpHeading(10, 350, 0.5), 0);
    close(lerpHeading(90, 270, 1), 270);
    assert.equal(lerpHeading(90, null, 0.5), null);
    assert.equal(lerpHeading(null, 45, 0.1), 45);
});

test('a glide lasts about one frame interval, bounded', () => {
    assert.equal(glideFraction(0, 500), 0);
    assert.equal(glideFraction(250, 500), 0.5);
    assert.equal(glideFraction(900, 500), 1);
    assert.equal(glideFraction(-5, 500), 0);
    assert.equal(glideFraction(1, 0), 1);
    assert.equal(glideDuration(NaN, 1000), GLIDE_DEFAULT_MS); // the first frame
    assert.equal(glideDuration(1000, 1500), 500); // LIVE_FPS 2
    assert.equal(glideDuration(1000, 1010), GLIDE_MIN_MS);
    assert.equal(glideDuration(1000, 9000), GLIDE_MAX_MS); // live: nothing moved for a while
    assert.equal(glideDuration(1000, 1000), GLIDE_DEFAULT_MS);
});

test('seeks and long gaps jump instead of gliding', () => {
    const t = Date.UTC(2026, 10, 20, 17);
    assert.equal(shouldSnap(t, t + 10_000), false); // the next replay step
    assert.equal(shouldSnap(t, t + SNAP_GAP_MS), false);
    assert.equal(shouldSnap(t, t + SNAP_GAP_MS + 1), true);
    assert.equal(shouldSnap(t, t - 10_000), true); // a seek back
    assert.equal(shouldSnap(NaN, t), true); // the first frame
});

test('frame markers are parsed, malformed entries skipped', () => {
    const frame = {
        markers: [['a', 6.51, 3.37, null], ['b', 6.5, 3.3, 90], ['', 1, 2, 3], ['c', 'x', 3, 0],
            'junk', ['d', 6.4, 3.4]],
    };
    assert.deepEqual([...parseMarkers(frame)], [
        ['a', { lat: 6.51, lon: 3.37, heading: null }],
        ['b', { lat: 6.5, lon: 3.3, heading: 90 }],
        ['d', { lat: 6.4, lon: 3.4, heading: null }],
    ]);
    assert.equal(parseMarkers({ cells: [] }).size, 0); // heat only
    assert.equal(parseMarkers(null).size, 0);
});

test('markers enter, stay and leave with the frames', () => {
    const next = parseMarkers({ markers: [['b', 1, 1, null], ['c', 2, 2, null]] });
    assert.deepEqual(diffMarkers(new Set(['a', 'b']), next), { enter: ['c'], stay: ['b'], exit: ['a'] });
});

test('the follow panel formats speed, heading and the trail', () => {
    assert.equal(formatSpeed(31.5), '31.5 km/h');
    assert.equal(formatSpeed(null), '–');
    assert.equal(formatHeading(270), '270° (W)');
    assert.equal(formatHeading(359), '359° (N)');
    assert.equal(formatHeading(undefined), '–');
    assert.deepEqual(trailLatLngs({ type: 'LineString', coordinates: [[3.37, 6.5], [3.38, 6.51]] }),
        [[6.5, 3.37], [6.51, 3.38]]);
    assert.deepEqual(trailLatLngs({ type: 'Point', coordinates: [3.37, 6.5] }), [[6.5, 3.37]]);
    assert.deepEqual(trailLatLngs(null), []);
});
