// The replay position slider. Dragging seeks, throttled: frames keep following the
// thumb while dragging, without flooding the socket with one seek per pixel.

export const SEEK_THROTTLE_MS = 150;

/** Call fn at most once per `ms`, always delivering the latest arguments last. */
export function throttle(fn, ms) {
    let last = 0;
    let timer = null;
    let pending = null;
    const fire = () => {
        timer = null;
        last = Date.now();
        const args = pending;
        pending = null;
        fn(...args);
    };
    const throttled = (...args) => {
        pending = args;
        const wait = ms - (Date.now() - last);
        if (wait <= 0) {
            clearTimeout(timer);
            fire();
        } else if (!timer) {
            timer = setTimeout(fire, wait);
        }
    };
    throttled.flush = () => {
        if (pending) {
            clearTimeout(timer);
            fire();
        }
    };
    throttled.cancel = () => {
        clearTimeout(timer);
        timer = null;
        pending = null;
    };
    return throttled;
}

/**
 * @param {HTMLInputElement} input  <input type="range">
 * @param {(tMs: number) => void} onSeek
 */
export function createScrubber(input, onSeek) {
    let dragging = false;
    let lastSent = NaN;
    // change repeats the last input's value; one seek per position per gesture.
    const seek = throttle((t) => {
        if (t !== lastSent) {
            lastSent = t;
            onSeek(t);
        }
    }, SEEK_THROTTLE_MS);

    input.addEventListener('pointerdown', () => {
        dragging = true;
        lastSent = NaN; // a new gesture may seek to the same spot again
    });
    input.addEventListener('input', () => seek(Number(input.value)));
    input.addEventListener('change', () => {
        seek(Number(input.value));
        seek.flush();
        dragging = false;
    });
    // A release outside the thumb may not fire change if the value did not move.
    window.addEventListener('pointerup', () => { dragging = false; });

    return {
        /** Range of the current replay session, epoch ms. */
        setRange(from, to, stepMs = 1000) {
            input.min = String(from);
            input.max = String(to);
            input.step = String(stepMs);
            input.disabled = !(to > from);
        },
        /** Move the thumb to a frame's time, unless the user is holding it. */
        setValue(t) {
            if (!dragging) input.value = String(t);
        },
        disable() {
            input.disabled = true;
        },
        get dragging() {
            return dragging;
        },
    };
}
