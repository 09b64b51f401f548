// Time parsing and display. The server may send times as ISO-8601 strings or epoch
// milliseconds (the contract allows both); everything inside the UI is epoch ms.
// Display uses the browser's local time zone, with the zone named on the big clock.

/** Epoch ms from an ISO string, epoch ms (number or numeric string), or a Date; NaN if unusable. */
export function parseTime(value) {
    if (value instanceof Date) return value.getTime();
    if (typeof value === 'number') return epochNumber(value);
    if (typeof value === 'string') {
        const s = value.trim();
        if (/^-?\d+(\.\d+)?$/.test(s)) return epochNumber(Number(s));
        return Date.parse(s);
    }
    return NaN;
}

// Epoch seconds would be ~1.7e9 today, epoch ms ~1.7e12; treat anything below 1e11
// as seconds so a server sending seconds does not land the scrubber in 1970.
function epochNumber(n) {
    if (!Number.isFinite(n)) return NaN;
    return Math.abs(n) < 1e11 ? n * 1000 : n;
}

const pad = (n) => String(n).padStart(2, '0');

/** "HH:MM:SS" in local time. */
export function formatTimeOfDay(ms) {
    const d = new Date(ms);
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

const clockDate = new Intl.DateTimeFormat('en-GB', {
    weekday: 'short', day: 'numeric', month: 'short', year: 'numeric',
});
const zoneName = (() => {
    try {
        const part = new Intl.DateTimeFormat('en-GB', { timeZoneName: 'short' })
            .formatToParts(new Date()).find((p) => p.type === 'timeZoneName');
        return part ? part.value : '';
    } catch {
        return '';
    }
})();

/** Parts for the big simulated clock: {date: "Fri 20 Nov 2026", time: "17:03:30", zone: "GMT+1"}. */
export function clockParts(ms) {
    return { date: clockDate.format(new Date(ms)).replace(',', ''), time: formatTimeOfDay(ms), zone: zoneName };
}

const weekday = new Intl.DateTimeFormat('en-GB', { weekday: 'short' });
const thousands = new Intl.NumberFormat('en-GB');

export function formatCount(n) {
    return Number.isFinite(Number(n)) ? thousands.format(Number(n)) : '–';
}

/** "Fri 17:00–18:00 · 12,345 pings" for a peak window. */
export function formatPeakLabel(startMs, endMs, pings) {
    const s = new Date(startMs);
    const e = new Date(endMs);
    const hm = (d) => `${pad(d.getHours())}:${pad(d.getMinutes())}`;
    const sameDay = s.toDateString() === e.toDateString()
        || (endMs - startMs <= 86400000 && e.getHours() === 0 && e.getMinutes() === 0);
    const range = sameDay ? `${hm(s)}–${hm(e)}` : `${hm(s)}–${weekday.format(e)} ${hm(e)}`;
    return `${weekday.format(s)} ${range} · ${formatCount(pings)} pings`;
}

/** Value for <input type="datetime-local"> (local time, minute precision). */
export function toLocalInputValue(ms) {
    const d = new Date(ms);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

/** Epoch ms from a datetime-local value (interpreted in local time); NaN if empty. */
export function fromLocalInputValue(value) {
    if (!value) return NaN;
    // "YYYY-MM-DDTHH:MM[:SS]" without a zone parses as local time per ECMAScript.
    return new Date(value).getTime();
}

/** ISO-8601 UTC string for query parameters. */
export function isoTime(ms) {
    return new Date(ms).toISOString();
}
