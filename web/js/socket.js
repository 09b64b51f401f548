// A WebSocket that comes back by itself. Used by live and replay.
//
// Reconnects after any unexpected close with exponential backoff (0.5 s doubling to
// 10 s) and "equal jitter" (half fixed, half random) so a server restart is not met
// by every browser at the same instant. The backoff resets once the server serves us
// (a message that is not an error), not on open: a server that accepts, says why it
// will not serve us and drops us must not get a tight loop.
//
// Too many sockets (close 4429) is worth retrying — another tab may close — but only
// slowly: it starts at TOO_MANY_START_ATTEMPT of the backoff (2–4 s) and keeps growing.
//
// Auth failures stop the loop: retrying a bad token forever helps no one. They are
// recognised by close code 4401/4403, by a close reason or an error message that
// says unauthorised/forbidden, or — when the handshake itself was refused and the
// browser only saw code 1006 — by probing an HTTP endpoint (see api.probeAuth).

export const BACKOFF_START_MS = 500;
export const BACKOFF_MAX_MS = 10000;

const AUTH_CODES = new Set([4401, 4403]);
export const CLOSE_TOO_MANY_SOCKETS = 4429;
export const CLOSE_TRY_AGAIN_LATER = 1013; // the server process holds all the sockets it can
export const TOO_MANY_START_ATTEMPT = 3;
// Codes that say "your request is wrong"; retrying the same URL would not help.
const FATAL_CODES = new Set([1002, 1003, 1007, 1008, 4400]);
const AUTH_WORDS = /unauthori[sz]ed|forbidden|invalid[_ ]token|missing[_ ]token|not authori[sz]ed|\b401\b|\b403\b/i;

export function isAuthMessage(msg) {
    if (!msg || msg.type !== 'error') return false;
    if (msg.status === 401 || msg.status === 403 || msg.code === 401 || msg.code === 403) return true;
    return AUTH_WORDS.test(`${msg.error || ''} ${msg.message || ''}`);
}

export function backoffDelay(attempt, random = Math.random) {
    const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_START_MS * 2 ** attempt);
    return ceiling / 2 + random() * (ceiling / 2);
}

export class ReconnectingSocket {
    /**
     * @param {object} o
     * @param {() => string} o.url           called before every attempt (view may have changed)
     * @param {(msg: object) => void} o.onMessage   parsed JSON messages
     * @param {(status: string, detail?: string) => void} o.onStatus
     *        'connecting' | 'open' | 'reconnecting' | 'unauthorised' | 'error' | 'closed'
     * @param {() => Promise<string | {verdict: string, reason?: string}>} [o.probeAuth]
     *        verdict 'unauthorised' | 'ok' | 'unknown', reason: the server's words
     * @param {() => boolean} [o.shouldReconnect]   false → an unexpected close ends it
     * @param {() => void} [o.onOpen]
     */
    constructor({ url, onMessage, onStatus, probeAuth, shouldReconnect, onOpen }) {
        this.url = url;
        this.onMessage = onMessage;
        this.onStatus = onStatus;
        this.probeAuth = probeAuth;
        this.shouldReconnect = shouldReconnect || (() => true);
        this.onOpen = onOpen || (() => {});
        this.ws = null;
        this.timer = null;
        this.attempt = 0;
        this.stopped = true;
    }

    start() {
        this.stop();
        this.stopped = false;
        this.attempt = 0;
        this._connect('connecting');
    }

    stop() {
        this.stopped = true;
        clearTimeout(this.timer);
        this.timer = null;
        const ws = this.ws;
        this.ws = null;
        if (ws) {
            ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
            try { ws.close(1000, 'client closed'); } catch { /* already closing */ }
        }
    }

    get isOpen() {
        return Boolean(this.ws && this.ws.readyState === WebSocket.OPEN);
    }

    /** Send a JSON message if connected; returns false if it was dropped. */
    send(obj) {
        if (!this.isOpen) return false;
        this.ws.send(JSON.stringify(obj));
        return true;
    }

    _connect(status) {
        this.onStatus(status);
        let ws;
        try {
            ws = new WebSocket(this.url());
        } catch (err) {
            this.stopped = true;
            this.onStatus('error', String(err && err.message ? err.message : err));
            return;
        }
        this.ws = ws;
        let opened = false;
        let authHint = false;
        let lastError = ''; // the server's last error message: why it refused or closed
        let lastErrorCode = '';
        ws.onopen = () => {
            opened = true;
            this.onStatus('open');
            this.onOpen();
        };
        ws.onmessage = (ev) => {
            let msg;
            try {
                msg = JSON.parse(ev.data);
            } catch {
                return; // not ours to crash on; the server only sends JSON
            }
            if (msg && msg.type === 'error') {
                lastError = String(msg.message || msg.error || '');
                lastErrorCode = String(msg.error || '');
                if (isAuthMessage(msg)) authHint = true;
            } else {
                this.attempt = 0;
            }
            this.onMessage(msg);
        };
        ws.onclose = (ev) => {
            if (this.ws !== ws) return; // superseded by stop() or a newer socket
            this.ws = null;
            if (this.stopped) return;
            this._afterClose(ev, opened, authHint, lastError, lastErrorCode);
        };
    }

    async _afterClose(ev, opened, authHint, lastError = '', lastErrorCode = '') {
        const why = ev.reason || lastError;
        if (authHint || AUTH_CODES.has(ev.code) || AUTH_WORDS.test(ev.reason || '')) {
            this._giveUp('unauthorised', why);
            return;
        }
        // The error message counts too: a proxy (or a dev server) may turn the close
        // into a bare 1006, losing the code but not the message before it.
        const tooMany = ev.code === CLOSE_TOO_MANY_SOCKETS || lastErrorCode === 'too_many_sockets'
            || ev.code === CLOSE_TRY_AGAIN_LATER || lastErrorCode === 'server_busy';
        if (tooMany) {
            this.attempt = Math.max(this.attempt, TOO_MANY_START_ATTEMPT);
        } else if (!opened || FATAL_CODES.has(ev.code)) {
            const probe = this.probeAuth ? await this.probeAuth() : 'unknown';
            const verdict = typeof probe === 'string' ? probe : probe && probe.verdict;
            if (this.stopped || this.ws) return; // stopped or restarted meanwhile
            if (verdict === 'unauthorised') {
                this._giveUp('unauthorised', why || (probe && probe.reason) || '');
                return;
            }
            if (FATAL_CODES.has(ev.code)) {
                this._giveUp('error', why || `closed with code ${ev.code}`);
                return;
            }
        }
        if (!this.shouldReconnect(ev)) {
            this.stopped = true;
            this.onStatus('closed');
            return;
        }
        const delay = backoffDelay(this.attempt);
        this.attempt += 1;
        const retry = `retry in ${(delay / 1000).toFixed(1)} s`;
        this.onStatus('reconnecting', tooMany && why ? `${why}; ${retry}` : retry);
        this.timer = setTimeout(() => {
            this.timer = null;
            if (!this.stopped) this._connect('reconnecting');
        }, delay);
    }

    _giveUp(status, detail) {
        this.stopped = true;
        this.onStatus(status, detail);
    }
}
