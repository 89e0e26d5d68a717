"""The dashboard's web app: routes, the token check, error pages, and serving it with uvicorn.

Security, in one place: the app binds 127.0.0.1 unless told otherwise, and refuses a non-loopback
host without `FT_DASHBOARD_TOKEN`. With a token, every request needs it (an `Authorization: Bearer`
header, or the cookie set by visiting `/?token=...` once), compared with `hmac.compare_digest`.
Without one (loopback only) the Host header must be a loopback name (no DNS rebinding) and anyone on
this machine may cancel a job. Forms carry a per-process secret (no cross-site cancel). Jinja2
autoescapes every value; the Content-Security-Policy allows scripts from this server only.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import threading
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import jinja2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from catalog.db import Catalog
from catalog.errors import Conflict, FtError, InvalidInput, NotFound
from catalog.store import ArtifactStore
from dashboard import views
from dashboard.formats import FILTERS

HERE = Path(__file__).resolve().parent
TOKEN_ENV = "FT_DASHBOARD_TOKEN"
COOKIE = "ft_dashboard"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve beyond this machine without a token (one line naming the flag and the variable)."""
    if not is_loopback(host) and not token:
        raise InvalidInput(
            f"--host {host} is reachable from other machines: set {TOKEN_ENV} to require a token, "
            "or leave --host at 127.0.0.1"
        )


def _cookie_value(token: str) -> str:
    """What the login cookie holds: a keyed digest of the token, not the token itself."""
    return hmac.new(token.encode(), b"ft-dashboard-session", hashlib.sha256).hexdigest()


def _host_name(header: str) -> str:
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class Guard(BaseHTTPMiddleware):
    """The token (when set), the loopback Host check (when not), and the security headers."""

    def __init__(self, app: Any, token: str | None):
        super().__init__(app)
        self.token = token

    async def dispatch(self, request: Request, call_next: Any) -> Response:
        if self.token is None:
            if _host_name(request.headers.get("host", "")) not in LOOPBACK_NAMES:
                return PlainTextResponse("this dashboard answers on localhost only", status_code=421)
        else:
            given = request.query_params.get("token")
            if given is not None:
                if not hmac.compare_digest(given.encode(), self.token.encode()):
                    return _unauthorized()
                rest = {k: v for k, v in request.query_params.multi_items() if k != "token"}
                target = request.url.path + (f"?{urlencode(rest)}" if rest else "")
                response = RedirectResponse(target, status_code=303)
                response.set_cookie(COOKIE, _cookie_value(self.token), httponly=True, samesite="strict")
                return response
            auth = request.headers.get("authorization", "")
            bearer = auth[7:].encode() if auth.lower().startswith("bearer ") else b""
            cookie = request.cookies.get(COOKIE, "").encode()
            if not (
                hmac.compare_digest(bearer, self.token.encode())
                or hmac.compare_digest(cookie, _cookie_value(self.token).encode())
            ):
                return _unauthorized()
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        return response


def _unauthorized() -> Response:
    return PlainTextResponse(
        f"a token is required: open this page with ?token=... ({TOKEN_ENV}) or send Authorization: Bearer",
        status_code=401,
    )


def create_app(
    catalog: Catalog, store: ArtifactStore, *, token: str | None = None, refresh_seconds: float = 2.0
) -> Starlette:
    """The dashboard over `catalog`; `token` (FT_DASHBOARD_TOKEN) guards every request when given."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True)
    templates = Jinja2Templates(env=env)
    templates.env.filters.update(FILTERS)
    form_secret = secrets.token_urlsafe(32)
    settings = catalog.settings

    def page(request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
        context = {"refresh": f"every {refresh_seconds:g}s", "form_secret": form_secret, **context}
        return templates.TemplateResponse(request, name, context, status_code=status)

    def render(request: Request, name: str, build: Any, *args: Any) -> Response:
        with catalog.session() as s:
            return page(request, name, build(s, *args))

    def home(request: Request) -> Response:
        return RedirectResponse("/pool", status_code=303)

    def pool(request: Request) -> Response:
        return render(request, "pool.html", views.pool)

    def pool_live(request: Request) -> Response:
        return render(request, "_pool.html", views.pool)

    def queue(request: Request) -> Response:
        return render(request, "queue.html", views.queue, views.QueueFilter.parse(request.query_params))

    def queue_live(request: Request) -> Response:
        return render(request, "_queue.html", views.queue, views.QueueFilter.parse(request.query_params))

    def job(request: Request) -> Response:
        return render(request, "job.html", views.job_page, settings, request.path_params["job_id"])

    def job_live(request: Request) -> Response:
        with catalog.session() as s:
            context = views.job_page(s, settings, request.path_params["job_id"])
            # 286 tells htmx to stop polling: a finished job's page changes no more
            return page(request, "_job.html", context, 286 if context["finished"] else 200)

    async def cancel(request: Request) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", errors="replace"))
        given = (form.get("form_secret") or [""])[0]
        if not hmac.compare_digest(given.encode(), form_secret.encode()):
            return PlainTextResponse("this form is stale or came from another site: reload the page", 403)
        job_id = request.path_params["job_id"]
        _cancel(catalog, job_id)
        return RedirectResponse(f"/jobs/{job_id}", status_code=303)

    def adapters(request: Request) -> Response:
        number = request.query_params.get("page", "1")
        if not number.isdigit():
            raise InvalidInput(f"?page= must be a number, got {number!r}")
        return render(request, "adapters.html", views.adapters_page, int(number))

    def adapter(request: Request) -> Response:
        return render(request, "adapter.html", views.adapter_page, request.path_params["name"])

    def compare(request: Request) -> Response:
        return render(request, "compare.html", views.compare_page, store, request.query_params)

    def download(request: Request) -> Response:
        from catalog.adapters import get_adapter
        from dashboard.download import adapter_files, stream_zip

        with catalog.session() as s:
            a = get_adapter(s, request.path_params["name"])
            name, uri, sha256 = a.name, a.artifact_uri, a.sha256
        root, files = adapter_files(store, uri, sha256, f"adapter {name}")
        headers = {"Content-Disposition": f'attachment; filename="{name}.zip"'}
        return StreamingResponse(stream_zip(root, files, name), media_type="application/zip", headers=headers)

    def datasets(request: Request) -> Response:
        return render(request, "datasets.html", views.datasets_page)

    def dataset(request: Request) -> Response:
        p = request.path_params
        return render(request, "dataset.html", views.dataset_page, store, p["name"], p["version"])

    def models(request: Request) -> Response:
        return render(request, "models.html", views.models_page)

    def templates_(request: Request) -> Response:
        return render(request, "templates.html", views.templates_page)

    def error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, HTTPException):
            status, message = exc.status_code, "no such page" if exc.status_code == 404 else str(exc.detail)
        else:
            codes = ((NotFound, 404), (Conflict, 409), (InvalidInput, 400), (FtError, 409))
            status, message = next(code for cls, code in codes if isinstance(exc, cls)), str(exc)
        return page(request, "error.html", {"status": status, "message": message}, status)

    routes = [
        Route("/", home),
        Route("/pool", pool),
        Route("/pool/live", pool_live),
        Route("/queue", queue),
        Route("/queue/live", queue_live),
        Route("/jobs/{job_id:int}", job),
        Route("/jobs/{job_id:int}/live", job_live),
        Route("/jobs/{job_id:int}/cancel", cancel, methods=["POST"]),
        Route("/adapters", adapters),
        Route("/adapters/{name}", adapter),
        Route("/adapters/{name}/download", download),
        Route("/compare", compare),
        Route("/datasets", datasets),
        Route("/datasets/{name}/{version:int}", dataset),
        Route("/models", models),
        Route("/templates", templates_),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(Guard, token=token)],
        exception_handlers={HTTPException: error, FtError: error},
    )


def _cancel(catalog: Catalog, job_id: int) -> None:
    """What `ft jobs cancel` does: cancel a queued job now, ask a running one to stop."""
    from catalog.jobs import request_cancel

    with catalog.session() as s:
        request_cancel(s, job_id)


def make_server(app: Starlette, host: str, port: int) -> Any:
    """A uvicorn server for `app` (not started): `serve()` runs it here, tests run it in a thread."""
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="off")
    return uvicorn.Server(config)


def start_in_thread(app: Starlette, host: str, port: int) -> tuple[Any, threading.Thread]:
    """Serve `app` from a daemon thread; returns (server, thread) once it accepts connections.
    Stop it with `server.should_exit = True; thread.join()`."""
    import time

    server = make_server(app, host, port)
    thread = threading.Thread(target=server.run, name="ft-dashboard", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"the dashboard could not start on {host}:{port}")
        time.sleep(0.02)
    return server, thread
