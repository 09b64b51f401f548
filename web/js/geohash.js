// Geohash decoding for frames: the server names cells by geohash, the map needs
// rectangles and centres. Decoding is pure arithmetic, so it runs in the browser
// rather than asking the server to send coordinates for every cell.

const BASE32 = '0123456789bcdefghjkmnpqrstuvwxyz';
const CHAR_VALUE = new Map([...BASE32].map((ch, i) => [ch, i]));

// Frames repeat the same cells many times a second; remember decoded boxes.
// Bounded so a long session panning the whole world cannot grow it forever.
const CACHE_LIMIT = 50000;
const cache = new Map();

/**
 * Decode a geohash to its bounding box [west, south, east, north] in degrees.
 * Throws on an empty string or a character outside the geohash alphabet.
 */
export function decodeBbox(geohash) {
    const hit = cache.get(geohash);
    if (hit) return hit;
    if (typeof geohash !== 'string' || geohash.length === 0) {
        throw new Error(`invalid geohash: ${JSON.stringify(geohash)}`);
    }
    let west = -180, east = 180, south = -90, north = 90;
    let lonBit = true; // geohash interleaves bits starting with longitude
    for (const ch of geohash.toLowerCase()) {
        const value = CHAR_VALUE.get(ch);
        if (value === undefined) throw new Error(`invalid geohash: ${JSON.stringify(geohash)}`);
        for (let mask = 16; mask >= 1; mask >>= 1) {
            const bit = (value & mask) !== 0;
            if (lonBit) {
                const mid = (west + east) / 2;
                if (bit) west = mid; else east = mid;
            } else {
                const mid = (south + north) / 2;
                if (bit) south = mid; else north = mid;
            }
            lonBit = !lonBit;
        }
    }
    const bbox = Object.freeze([west, south, east, north]);
    if (cache.size >= CACHE_LIMIT) cache.clear();
    cache.set(geohash, bbox);
    return bbox;
}

/** Centre of a geohash cell as [lat, lon] (Leaflet order). */
export function decodeCentre(geohash) {
    const [w, s, e, n] = decodeBbox(geohash);
    return [(s + n) / 2, (w + e) / 2];
}

/** Size in degrees [width (lon), height (lat)] of any cell at this precision. */
export function cellSizeDegrees(precision) {
    const bits = 5 * precision;
    const lonBits = Math.ceil(bits / 2);
    const latBits = Math.floor(bits / 2);
    return [360 / 2 ** lonBits, 180 / 2 ** latBits];
}
