// ReconnectingSocket against a scripted fake WebSocket and node's mock timers: how
// often it retries and what it reports, for the refusals the server really sends
// (an error message, then a close with a code and the message as its reason).
import test from 'node:test';
import assert from 'node:assert/strict';

import { ReconnectingSocket, backoffDelay, TOO_MANY_START_ATTEMPT } from '../js/socket.js';

class FakeSocket {
    static OPEN = 1;
    static made = [];
    static script = () => {}; // (socket) => void, run when the socket opens
    static opens = true; // false: the handshake is refused (the browser sees only 1006)

    constructor(url) {
        this.url = url;
        this.readyState = 0;
        this.sent = [];
        FakeSocket.made.push(this);
        queueMicrotask(() => {
            if (!FakeSocket.opens) {
                this.serverClose(1006, '');
                return;
            }
            this.readyState = FakeSocket.OPEN;
            if (this.onopen) this.onopen();
            FakeSocket.script(this);
        });
    }

    send(data) { this.sent.push(data); }

    message(obj) { if (this.onmessage) this.onmessage({ data: JSON.stringify(obj) }); }

    serverClose(code, reason = '') {
        this.readyState = 3;
        if (this.onclose) this.onclose({ code, reason });
    }

    close() { this.readyState = 3; }
}

function setup(t, script) {
    FakeSocket.made = [];
    FakeSocket.opens = true;
    FakeSocket.script = script;
    globalThis.WebSocket = FakeSocket;
    t.mock.timers.enable({ apis: ['setTimeout'] });
    const statuses = [];
    const messages = [];
    const socket = new ReconnectingSocket({
        url: () => 'ws://test/ws/live',
        onMessage: (m) => messages.push(m),
        onStatus: (status, detail) => statuses.push([status, detail]),
        probeAuth: async () => ({ verdict: 'ok', reason: '' }),
    });
    return { socket, statuses, messages };
}

const flush = () => new Promise((resolve) => setImmediate(resolve));

const TOO_MANY = 'this token already has 1 open sockets (limit 1)';
const refuseTooMany = (ws) => {
    ws.message({ type: 'error', error: 'too_many_sockets', message: TOO_MANY });
    ws.serverClose(4429, TOO_MANY);
};

test('4429: the error message before the close does not reset the backoff', async (t) => {
    const { socket, statuses } = setup(t, refuseTooMany);
    socket.start();
    await flush();
    // each refusal: the retry waits at least the backoff floor for that attempt
    for (let k = 0; k < 5; k++) {
        assert.equal(FakeSocket.made.length, k + 1);
        const attempt = TOO_MANY_START_ATTEMPT + k;
        assert.equal(socket.attempt, attempt + 1, `after refusal ${k + 1}`);
        const floor = backoffDelay(attempt, () => 0);
        t.mock.timers.tick(floor - 1);
        await flush();
        assert.equal(FakeSocket.made.length, k + 1, 'retried before the backoff floor');
        t.mock.timers.tick(backoffDelay(attempt, () => 1) - floor + 1);
        await flush();
    }
    // 5 refusals took at least 2 + 4 + 5 + 5 + 5 s, not 5 × 0.25 s
    const [status, detail] = statuses.at(-1);
    assert.equal(status, 'reconnecting');
    assert.match(detail, /already has 1 open sockets.*retry in \d+\.\d s/);
    socket.stop();
});

test('1013 server_busy: backs off like 4429 and says why', async (t) => {
    const BUSY = 'this server process already serves 584 sockets, all it has threads for';
    const { socket, statuses } = setup(t, (ws) => {
        ws.message({ type: 'error', error: 'server_busy', message: BUSY });
        ws.serverClose(1013, BUSY);
    });
    socket.start();
    await flush();
    assert.equal(socket.attempt, TOO_MANY_START_ATTEMPT + 1);
    t.mock.timers.tick(backoffDelay(TOO_MANY_START_ATTEMPT, () => 0) - 1);
    await flush();
    assert.equal(FakeSocket.made.length, 1, 'retried before the backoff floor');
    const [status, detail] = statuses.at(-1);
    assert.equal(status, 'reconnecting');
    assert.match(detail, /already serves 584 sockets.*retry in \d+\.\d s/);
    socket.stop();
});

test('4429 lost to a bare 1006 close: the error message still slows the retries', async (t) => {
    const { socket } = setup(t, (ws) => {
        ws.message({ type: 'error', error: 'too_many_sockets', message: TOO_MANY });
        ws.serverClose(1006, '');
    });
    socket.start();
    await flush();
    assert.equal(socket.attempt, TOO_MANY_START_ATTEMPT + 1);
    t.mock.timers.tick(backoffDelay(TOO_MANY_START_ATTEMPT, () => 0) - 1);
    await flush();
    assert.equal(FakeSocket.made.length, 1);
    socket.stop();
});

test('a frame (being served) resets the backoff; an error message does not', async (t) => {
    let serve = false;
    const { socket } = setup(t, (ws) => {
        if (serve) ws.message({ type: 'frame', cells: [], total: 0, max: 0 });
        else ws.message({ type: 'error', error: 'bad_message', message: 'x' });
        ws.serverClose(1011, '');
    });
    socket.start();
    await flush();
    assert.equal(socket.attempt, 1);
    t.mock.timers.tick(backoffDelay(0, () => 1));
    await flush();
    assert.equal(socket.attempt, 2, 'an error message must not reset the backoff');
    serve = true;
    t.mock.timers.tick(backoffDelay(1, () => 1));
    await flush();
    assert.equal(socket.attempt, 1, 'served a frame: back to the first step');
    socket.stop();
});

test('unauthorised gives up and reports the server reason', async (t) => {
    const { socket, statuses } = setup(t, (ws) => {
        ws.message({ type: 'error', error: 'unauthorized', message: 'token expired' });
        ws.serverClose(4401, ''); // some proxies drop the close reason: the message says it
    });
    socket.start();
    await flush();
    assert.deepEqual(statuses.at(-1), ['unauthorised', 'token expired']);
    t.mock.timers.tick(60_000);
    await flush();
    assert.equal(FakeSocket.made.length, 1, 'never retries a refused token');
});

test('a refused handshake (1006) asks the API and reports its reason', async (t) => {
    FakeSocket.made = [];
    FakeSocket.opens = false;
    globalThis.WebSocket = FakeSocket;
    t.mock.timers.enable({ apis: ['setTimeout'] });
    const statuses = [];
    const socket = new ReconnectingSocket({
        url: () => 'ws://test/ws/live',
        onMessage: () => {},
        onStatus: (status, detail) => statuses.push([status, detail]),
        probeAuth: async () => ({ verdict: 'unauthorised', reason: "needs the 'viewer' role" }),
    });
    socket.start();
    await flush();
    await flush();
    assert.deepEqual(statuses.at(-1), ['unauthorised', "needs the 'viewer' role"]);
    assert.equal(FakeSocket.made.length, 1);
});
