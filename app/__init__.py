"""heatreplay: live and replay heatmaps for moving fleets."""

from __future__ import annotations

import atexit
from pathlib import Path
from typing import Any

from flask import Flask, send_from_directory
from flask_sock import Sock

from app.settings import Settings, load_settings

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
sock = Sock()
WS_MAX_MESSAGE_BYTES = 64 * 1024  # a client message over this closes its socket (1009)


def create_app(
    settings: Settings | None = None, test_config: dict[str, Any] | None = None
) -> Flask:
    """App factory: wires settings, services, blueprints and the web UI; nothing else."""
    from app.analytics_api import bp as analytics_bp
    from app.drivers_api import bp as drivers_bp
    from app.errors import register_error_handlers
    from app.ingest import bp as ingest_bp
    from app.live_api import bp as live_bp
    from app.logging_setup import configure_logging
    from app.ops import bp as ops_bp
    from app.replay_api import bp as replay_bp
    from app.services import Services

    # a Settings built in code is held to the same rules as one from the environment
    settings = (settings or load_settings()).validate()
    app = Flask(__name__, static_folder=None)
    app.config.update(
        SETTINGS=settings,
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        # control messages and a first-message token are well under 1 KiB; a socket
        # sending more (even before authenticating) is closed with 1009, not buffered
        SOCK_SERVER_OPTIONS={"ping_interval": 20, "max_message_size": WS_MAX_MESSAGE_BYTES},
    )
    if test_config:
        app.config.update(test_config)
    configure_logging()

    services = Services(settings)
    app.extensions["heatreplay"] = services
    atexit.register(services.close)

    register_error_handlers(app)
    sock.init_app(app)
    # one blueprint per area: ingest, live, replay, analytics, drivers, ops
    for bp in (ingest_bp, live_bp, replay_bp, analytics_bp, drivers_bp, ops_bp):
        app.register_blueprint(bp)

    @app.get("/")
    def index() -> Any:
        return send_from_directory(WEB_DIR, "index.html")

    @app.get("/<path:name>")
    def web_file(name: str) -> Any:
        return send_from_directory(WEB_DIR, name)

    return app
