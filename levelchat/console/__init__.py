"""The operator console: a static page (HTML, JS, CSS; no build step) served at ``/console`` by
the control plane and by a node.  The page itself is public; everything it shows comes from the
API with the operator's token, which the page asks for and keeps in ``sessionStorage`` (never in
a URL).  See ``docs/operations.md``, "Operator console"."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from levelchat.errors import ApiError

CONSOLE_DIR = Path(__file__).resolve().parent
#: the files the console serves (a fixed set: a request names one, never a path)
FILES = {
    "console.js": "text/javascript",
    "console.css": "text/css",
}
#: the page may talk to its own origin only; nothing is framed, inlined or fetched elsewhere
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


async def page(request: web.Request) -> web.StreamResponse:
    return _file("index.html", "text/html")


async def asset(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    content_type = FILES.get(name)
    if content_type is None:
        raise ApiError("not_found", f"no console file {name[:64]!r}")
    return _file(name, content_type)


def _file(name: str, content_type: str) -> web.StreamResponse:
    path = CONSOLE_DIR / name
    if not path.is_file():
        raise ApiError("not_found", f"the console is not installed ({name} is missing)")
    return web.Response(
        body=path.read_bytes(), headers={**HEADERS, "Content-Type": f"{content_type}; charset=utf-8"}
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/console", page)
    app.router.add_get("/console/{name}", asset)
