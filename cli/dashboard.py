"""`ft dashboard`: serve the web view of the pool, the queue, the adapters and their curves."""

from __future__ import annotations

import os

import click

from cli.context import AppContext, pass_app


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; any other than loopback needs FT_DASHBOARD_TOKEN.")  # fmt: skip
@click.option("--port", type=click.IntRange(1, 65535), default=8765, show_default=True)
@click.option("--refresh", type=click.FloatRange(min=0.5), default=2.0, show_default=True,
              help="Seconds between live refreshes of the pool, queue and job pages.")  # fmt: skip
@pass_app
def dashboard(app: AppContext, host: str, port: int, refresh: float) -> None:
    """Serve the dashboard: pool, queue, jobs (log, curves, cancel), adapters, datasets, models.

    It binds 127.0.0.1 (this machine only). Anyone who can open it may cancel jobs; to serve the
    team, set FT_DASHBOARD_TOKEN and open http://HOST:PORT/?token=TOKEN once (or send
    `Authorization: Bearer TOKEN`).

    \b
    Example:
        ft dashboard
        FT_DASHBOARD_TOKEN=$(openssl rand -hex 16) ft dashboard --host 0.0.0.0 --port 8765
    """
    from dashboard.app import TOKEN_ENV, check_bind, create_app, make_server

    token = os.environ.get(TOKEN_ENV) or None
    check_bind(host, token)
    web = create_app(app.catalog, app.store, token=token, refresh_seconds=refresh)
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"ft dashboard on http://{shown}:{port}/" + (" (token required)" if token else ""), err=True)
    make_server(web, host, port).run()
