"""The `heatreplay` command: one subcommand per pipeline stage, plus `up` and `token`."""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
from datetime import timedelta

import click

from app.settings import Settings, SettingsError, load_settings


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


def parse_duration(text: str) -> timedelta:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text)
    if not match:
        raise click.BadParameter(f"{text!r} is not a duration like 90s, 30m, 24h or 7d")
    value, unit = float(match.group(1)), match.group(2)
    return timedelta(seconds=value * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit])


def _positive_duration(
    _ctx: click.Context, param: click.Parameter, value: str | None
) -> str | None:
    """A duration option checked before any work starts (not after a first pass)."""
    if value is not None and parse_duration(value).total_seconds() <= 0:
        raise click.BadParameter("must be longer than 0s", param=param)
    return value


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


@click.group()
def main() -> None:
    """heatreplay: live and replay heatmaps for moving fleets."""
    from app.logging_setup import configure_logging

    configure_logging()


@main.command()
@click.option("--no-simulate", is_flag=True, help="Do not start the simulator.")
@click.option(
    "--drivers",
    type=click.IntRange(min=1),
    default=300,
    show_default=True,
    help="Simulated drivers.",
)
@click.option(
    "--backfill",
    default=None,
    callback=_positive_duration,
    help="Fill this much past history first, e.g. 24h.",
)
def up(no_simulate: bool, drivers: int, backfill: str | None) -> None:
    """Migrate, start what is missing, run everything, print the URL; Ctrl-C stops."""
    from app.up import SetupError, run_up

    try:
        code = run_up(_settings(), simulate=not no_simulate, drivers=drivers, backfill=backfill)
    except SetupError as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(code)


@main.command()
def migrate() -> None:
    """Create the database if needed and run Alembic migrations to head."""
    from app.up import SetupError, prepare

    try:
        prepare(_settings(), redis_too=False)
    except SetupError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("database is at head")


@main.command()
@click.option("--wait", default=60.0, show_default=True, help="Seconds to wait for the broker.")
def topics(wait: float) -> None:
    """Create the pings and dead-letter topics if missing (TOPIC_PARTITIONS partitions)."""
    from app.kafka_io import BrokerUnavailable, ensure_topics, wait_for_broker

    settings = _settings()
    try:
        wait_for_broker(settings, wait)
    except BrokerUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    for note in ensure_topics(settings):
        click.echo(f"note: {note}", err=True)
    click.echo(f"topics {settings.topic_pings} and {settings.topic_dlq} exist")


@main.command()
@click.option("--days", type=click.IntRange(min=0), default=None, help="Default RETENTION_DAYS.")
@click.option("--dry-run", is_flag=True, help="List what would be dropped; drop nothing.")
@click.option(
    "--every",
    default=None,
    callback=_positive_duration,
    help="Repeat at this interval (e.g. 1h) until stopped.",
)
def retention(days: int | None, dry_run: bool, every: str | None) -> None:
    """Drop day partitions of raw pings older than N days; rollups are kept."""
    from app.retention import apply_retention

    settings = _settings()
    stop = _stop_on_signals()
    interval_s = parse_duration(every).total_seconds() if every else None
    while True:
        result = apply_retention(settings, days=days, dry_run=dry_run)
        verb = "would drop" if dry_run else "dropped"
        if result.cutoff is None:
            click.echo("retention: RETENTION_DAYS=0, keeping everything")
        else:
            click.echo(
                f"retention: {verb} {len(result.dropped)} partition(s) before "
                f"{result.cutoff}: {' '.join(result.dropped) or '-'}"
            )
        if interval_s is None or stop.wait(interval_s):
            return


@main.command("geom-index")
def geom_index() -> None:
    """Build the indexes day partitions are due: the spatial one (GEOM_INDEX), then a
    closed day's (driver_id, ts) one."""
    from app.driver_index import driver_index_due
    from app.geom_index import index_due

    settings = _settings()
    built = index_due(settings, progress=click.echo)
    for b in built:
        click.echo(f"geom index: {b.partition} built in {b.seconds:.1f} s")
    click.echo(f"geom index: {len(built)} partition(s) built (GEOM_INDEX={settings.geom_index})")
    drivers = driver_index_due(settings, progress=click.echo)
    for b in drivers:
        click.echo(f"driver index: {b.partition} built in {b.seconds:.1f} s")
    click.echo(f"driver index: {len(drivers)} partition(s) built")


@main.command("live-worker")
def live_worker() -> None:
    """Consume pings into the live heat counters in Redis."""
    from app.live_worker import run_live_worker

    run_live_worker(_settings(), _stop_on_signals())


@main.command()
def sink() -> None:
    """Consume pings into PostGIS (exactly once)."""
    from app.postgis_sink import run_sink

    run_sink(_settings(), _stop_on_signals())


@main.command()
@click.option("--workers", type=int, default=None)
@click.option("--threads", type=int, default=None)
def web(workers: int | None, threads: int | None) -> None:
    """Serve the API, sockets and UI with gunicorn (gthread)."""
    settings = _settings()
    threads = threads or settings.web_threads
    # the workers' settings see the thread count gunicorn runs with (their socket cap)
    os.environ["WEB_THREADS"] = str(threads)
    settings.with_(web_threads=threads).validate()
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "app.wsgi:app",
        "--worker-class",
        "gthread",
        "--workers",
        str(workers or settings.web_workers),
        "--threads",
        str(threads),
        # every open socket holds a thread and a connection: with gunicorn's default
        # (1,000) a worker serving ~1,000 sockets stopped accepting anything else
        # (ingest, the API, new sockets)
        "--worker-connections",
        str(max(1000, threads + 100)),
        "--bind",
        f"{settings.web_host}:{settings.web_port}",
        "--graceful-timeout",
        "10",
        "--timeout",
        "120",
        "--access-logfile",
        "-",
    ]
    os.execv(sys.executable, argv)


@main.command()
@click.option("--role", type=click.Choice(["viewer", "ingest"]), required=True)
@click.option(
    "--ttl", default=None, help="Lifetime, e.g. 30m, 12h, 7d.  [default: TOKEN_TTL_S, 12h]"
)
def token(role: str, ttl: str | None) -> None:
    """Print a signed JWT for ROLE."""
    from app.auth import mint_token

    seconds = None
    if ttl is not None:
        seconds = int(parse_duration(ttl).total_seconds())
        if seconds < 1:
            raise click.BadParameter("the lifetime must be at least 1s", param_hint="--ttl")
    click.echo(mint_token(_settings(), role, seconds))


@main.command()
@click.option("--url", default=None, help="Base URL of the service (default from WEB_PORT).")
@click.option("--drivers", type=click.IntRange(min=1), default=300, show_default=True)
@click.option("--seed", default=42, show_default=True)
@click.option(
    "--backfill",
    default=None,
    callback=_positive_duration,
    help="Post this much past history first, e.g. 24h.",
)
@click.option("--then-live", is_flag=True, help="After the backfill, keep posting live.")
@click.option(
    "--interval",
    default=None,
    type=click.FloatRange(min=0.1),
    help="Seconds between a driver's pings (live mode).",
)
@click.option(
    "--duration",
    default=None,
    callback=_positive_duration,
    help="Stop after this long (live mode), e.g. 10m.",
)
def simulate(
    url: str | None,
    drivers: int,
    seed: int,
    backfill: str | None,
    then_live: bool,
    interval: float | None,
    duration: str | None,
) -> None:
    """Lagos drivers with a daily rhythm; --backfill 24h writes a past day fast."""
    from app.auth import mint_token
    from app.simulate import run_simulate

    settings = _settings()
    base = url or f"http://{settings.web_host}:{settings.web_port}"
    kwargs: dict[str, object] = {}
    if interval is not None:
        kwargs["interval_s"] = interval
    sent = run_simulate(
        base_url=base,
        # runs until stopped (under `heatreplay up`, for days): a TOKEN_TTL_S token would
        # expire under it, its posts turn 401 and `up` stops everything. The token never
        # leaves this process.
        token=mint_token(settings, "ingest", ttl_s=366 * 86400),
        drivers=drivers,
        seed=seed,
        backfill=parse_duration(backfill) if backfill else None,
        live_after_backfill=then_live or not backfill,
        duration_s=parse_duration(duration).total_seconds() if duration else None,
        stop_event=_stop_on_signals(),
        **kwargs,  # type: ignore[arg-type]
    )
    click.echo(f"sent {sent} pings", err=True)


if __name__ == "__main__":
    main()
