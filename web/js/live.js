// Live mode: one socket on /ws/live following the map's view.

import { socketUrl, probeAuth } from './api.js';
import { ReconnectingSocket, isAuthMessage } from './socket.js';

/**
 * @param {object} o
 * @param {() => {precision: number, bbox: number[]}} o.getView
 * @param {(frame: object) => void} o.onFrame
 * @param {(state: string, detail?: string) => void} o.onState
 * @param {(message: string) => void} o.onServerError
 */
export function createLive({ getView, onFrame, onState, onServerError }) {
    // 'live' is shown once a frame has arrived on this connection, not on open: a
    // server that accepts and then refuses (expired token, too many sockets) must not
    // flash 'live' first.
    let serving = false;
    let urlView = ''; // the view the socket URL carried
    const socket = new ReconnectingSocket({
        url: () => {
            const view = getView();
            urlView = JSON.stringify(view);
            return socketUrl('ws/live', { precision: view.precision, bbox: view.bbox });
        },
        probeAuth: () => probeAuth(getView()),
        onOpen() {
            // the map moved while the socket was connecting: the URL's view is stale
            const view = getView();
            if (JSON.stringify(view) !== urlView) socket.send({ op: 'view', precision: view.precision, bbox: view.bbox });
        },
        onMessage(msg) {
            if (msg.type === 'frame') {
                if (!serving) {
                    serving = true;
                    onState('live');
                }
                onFrame(msg);
            }
            // Auth errors precede a 4401/4403 close; the not-authorised panel says it.
            else if (msg.type === 'error' && !isAuthMessage(msg)) onServerError(msg.message || msg.error || 'server error');
        },
        onStatus(status, detail) {
            // 'open' waits for the first frame; 'closed' cannot happen (live always reconnects).
            if (status === 'open') return;
            serving = false;
            onState(status, detail);
        },
    });

    return {
        start: () => socket.start(),
        stop: () => socket.stop(),
        /** Follow pan/zoom without reconnecting; a reconnect uses the new view anyway. */
        setView(view) {
            socket.send({ op: 'view', precision: view.precision, bbox: view.bbox });
        },
        socket,
    };
}
