"""WSGI entry point for gunicorn: ``gunicorn app.wsgi:app``.

The web process holds one thread per socket and a live hub that builds thousands of
small objects a round. With CPython's default thresholds (700, 10, 10) its full
collections walked the whole heap every few seconds and paused every socket for
100-300 ms (docs/performance.md, third round). So, once the app is built: everything
allocated so far moves to the permanent generation (``gc.freeze``), which no
collection walks, and young collections run every 50,000 allocations, full ones
rarely. The objects a round builds are mostly acyclic and freed by reference
counting; the collector is only for cycles."""

import gc

from app import create_app

app = create_app()

gc.freeze()
gc.set_threshold(50_000, 20, 100)
