// Talking to the server: the viewer token, /api/* fetches and socket URLs.
//
// The token comes from the page URL (`/?token=...`, as printed by `heatreplay up`).
// Fetches send it as `Authorization: Bearer`; sockets as `?token=` because browsers
// cannot set headers on a WebSocket. All URLs are relative to the page so the UI
// works wherever the app is mounted.

let token = new URLSearchParams(window.location.search).get('token') || '';

export function getToken() {
    return token;
}

/** Use a new token and put it in the address bar, so a reload keeps working. */
export function setToken(value) {
    token = String(value || '').trim();
    const url = new URL(window.location.href);
    if (token) url.searchParams.set('token', token);
    else url.searchParams.delete('token');
    window.history.replaceState(null, '', url);
}

export class AuthError extends Error {
    constructor(status, message) {
        super(message || (status === 403 ? 'forbidden' : 'unauthorised'));
        this.name = 'AuthError';
        this.status = status;
    }
}

export class ApiError extends Error {
    constructor(status, message) {
        super(message);
        this.name = 'ApiError';
        this.status = status;
    }
}

// Build a query string but keep commas literal, so bbox reads "w,s,e,n" in logs.
function queryString(params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) {
        if (v === undefined || v === null || v === '') continue;
        q.set(k, Array.isArray(v) ? v.join(',') : String(v));
    }
    return q.toString().replace(/%2C/gi, ',');
}

export function apiUrl(path, params = {}) {
    const qs = queryString(params);
    return `${path}${qs ? `?${qs}` : ''}`;
}

/** GET a JSON endpoint under api/. Throws AuthError on 401/403, ApiError otherwise. */
export async function apiGet(path, params = {}, { signal } = {}) {
    const headers = { Accept: 'application/json' };
    if (token) headers.Authorization = `Bearer ${token}`;
    const res = await fetch(apiUrl(path, params), { headers, signal, cache: 'no-store' });
    if (res.status === 401 || res.status === 403) {
        throw new AuthError(res.status, await errorText(res));
    }
    if (!res.ok) {
        throw new ApiError(res.status, `${res.status} ${await errorText(res) || res.statusText}`);
    }
    return res.json();
}

async function errorText(res) {
    try {
        const body = await res.json();
        return body && (body.message || body.error) ? String(body.message || body.error) : '';
    } catch {
        return '';
    }
}

/** Absolute ws:// or wss:// URL for a socket path relative to the page, with the token. */
export function socketUrl(path, params = {}) {
    const url = new URL(path, window.location.href);
    const scheme = url.protocol === 'https:' ? 'wss:' : 'ws:';
    const qs = queryString({ ...params, token: token || undefined });
    return `${scheme}//${url.host}${url.pathname}${qs ? `?${qs}` : ''}`;
}

/**
 * After a socket failed, ask an ordinary endpoint whether the token is the problem.
 * A browser never sees the HTTP status of a refused WebSocket handshake (it just
 * gets close code 1006), so this is how we tell "not authorised" from "server down".
 * Returns {verdict, reason}: verdict 'unauthorised', 'ok' or 'unknown' (server
 * unreachable or another error); reason is the server's message for a refusal.
 */
export async function probeAuth(view) {
    try {
        await apiGet('api/live', { precision: view.precision, bbox: view.bbox });
        return { verdict: 'ok', reason: '' };
    } catch (err) {
        if (err instanceof AuthError) return { verdict: 'unauthorised', reason: err.message };
        return { verdict: 'unknown', reason: '' };
    }
}
