"""The web app of ``lexsearch serve``: a page, its JSON API, and images by collection id.

    GET  /                      the page (``/?q=white+horse`` runs that search on load)
    GET  /api/info              the collection's name, folder and image count
    GET  /api/alive             the collection's folder, at once (no lock: the event loop alone answers)
    GET  /api/search?q=&top=    ``lexsearch query --json`` plus each result's ``id``
                                (also ``expand=1``, ``rerank=0``, ``pruned=1``, ``min_score=X``, the photo
                                filters ``after=``, ``before=``, ``camera=``, ``folder=``, ``orientation=``
                                and ``sort=date|date-asc``, the same as those words in ``q``; with
                                ``format=table|json|paths|null`` the very bytes ``lexsearch query`` prints;
                                the search's notes in a ``Lexsearch-Notes`` header)
    POST /api/search/image      the request body (an image file, at most MAX_UPLOAD_BYTES) as the query
    GET  /api/similar/{id}      "more like this": the collection image as the query
    GET  /api/explain/{id}      the image's own words
    GET  /api/explain?text=     what a query of that text means: ``lexsearch explain --text TEXT --json``
    GET  /api/heatmap/{id}?word=   the heat map of one word over the image (PNG)
    GET  /dupes                 the near-duplicates page: each group side by side (``/api/dupes``)
    GET  /api/dupes?threshold=  ``lexsearch dupes --json`` (each file with its ``id``) and ``note``: the
                                line on images without a perceptual hash, or null. Read only: nothing
                                is ever deleted, by the page or the API.
    GET  /image/{id}, /thumb/{id}  the image (upright, at most 1600 px) and its cached thumbnail

An id is a positive integer the collection holds; anything else (a path, ``..`` in any encoding, an id the
collection does not hold) is a 404, and no file is ever opened from a path in the request. Every answer names
the collection's folder in a ``Lexsearch-Collection`` header (``discovery.collection_tag``), so a client
that sent a search straight to a recorded port knows whose answer it got.
"""

from __future__ import annotations

import logging
import re
import time
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from lexsearch.errors import DataError, LexsearchError, UsageError
from lexsearch.serve.discovery import (
    COLLECTION_HEADER,
    EXACT_PATHS,
    PATHS_HEADER,
    STALE_HEADER,
    collection_tag,
)
from lexsearch.serve.service import NotFound, SearchService
from lexsearch.serve.wire import NOTES_HEADER, encode_notes

logger = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 25 * 1024 * 1024  # a phone photo is 2-12 MB; anything far beyond is not a query image
DEFAULT_TOP = 24
_ID = re.compile(r"[1-9][0-9]{0,17}")  # what an image id looks like; nothing else reaches the service
# The page's files, by name: a fixed table, so no request names a file on disk.
_STATIC = {
    "app.js": "text/javascript",
    "style.css": "text/css",
    "index.html": "text/html",
    "dupes.html": "text/html",
    "dupes.js": "text/javascript",
}
# Same-origin only: the page loads nothing from elsewhere (it works offline) and nothing may embed it.
_CSP = "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; frame-ancestors 'none'"


def _image_id(request: Request) -> int:
    raw = request.path_params.get("id", "")
    if not isinstance(raw, str) or not _ID.fullmatch(raw):
        raise HTTPException(404)
    return int(raw)


def _flag(request: Request, name: str, default: bool) -> bool:
    value = request.query_params.get(name)
    if value is None:
        return default
    return value.lower() in ("1", "true", "yes", "on")


def _top(request: Request) -> int:
    raw = request.query_params.get("top", str(DEFAULT_TOP))
    try:
        return int(raw)
    except ValueError:
        raise UsageError(f"top must be an integer, not {raw!r}.") from None


def create_app(service: SearchService, allowed_hosts: list[str] | None = None) -> Starlette:
    """The ASGI app over ``service``. ``allowed_hosts`` (the loopback names when bound to loopback) refuses
    requests for other Host headers, so a web page elsewhere cannot reach the server by DNS rebinding."""
    static = resources.files("lexsearch.serve") / "static"

    def static_response(name: str) -> Response:
        return Response((static / name).read_bytes(), media_type=_STATIC[name])

    async def page(request: Request) -> Response:
        return static_response("index.html")

    async def dupes_page(request: Request) -> Response:
        return static_response("dupes.html")

    async def api_dupes(request: Request) -> Response:
        raw = request.query_params.get("threshold")
        threshold = None if raw in (None, "") else _float(raw, "threshold")
        t0 = time.perf_counter()
        return _timed(await run_in_threadpool(service.dupes, threshold), t0)

    async def static_file(request: Request) -> Response:
        name = request.path_params.get("name")
        if name not in _STATIC:
            raise HTTPException(404)
        return static_response(name)

    async def info(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(service.info))

    folder = str(service.collection.path)

    async def alive(request: Request) -> Response:
        # A search in progress holds the service's lock: this answers without it (discovery.ask's check).
        return JSONResponse({"collection": folder})

    async def api_search(request: Request) -> Response:
        params = request.query_params
        min_score = params.get("min_score")
        options = {
            "expand": _flag(request, "expand", False),
            "rerank": _flag(request, "rerank", True),
            "pruned": _flag(request, "pruned", False),
            "min_score": None if min_score in (None, "") else _float(min_score),
        }
        t0 = time.perf_counter()
        q = _with_meta(params)
        form = params.get("format")
        if form is not None:  # what `lexsearch query` prints, as bytes
            top = _top(request)
            body, rows = await run_in_threadpool(lambda: service.search_output(q, top, form, **options))
            ms = 1000 * (time.perf_counter() - t0)
            headers = {"Server-Timing": f"search;dur={ms:.2f}", STALE_HEADER: str(rows.stale)}
            if rows.notes:
                headers[NOTES_HEADER] = encode_notes(rows.notes)
            return Response(body, media_type="application/octet-stream", headers=headers)
        results = await run_in_threadpool(lambda: service.search(q, _top(request), **options))
        headers = {STALE_HEADER: str(results.stale)} if getattr(results, "stale", 0) else {}
        if getattr(results, "exact_paths", False):
            headers[PATHS_HEADER] = EXACT_PATHS
        if getattr(results, "notes", None):
            headers[NOTES_HEADER] = encode_notes(results.notes)
        return _timed(results, t0, headers)

    async def api_search_image(request: Request) -> Response:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_UPLOAD_BYTES:
            return _error(413, f"the image is larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MB")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_UPLOAD_BYTES:  # a chunked upload that declared no length
                return _error(413, f"the image is larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MB")
        if not body:
            raise UsageError("no image in the request body")
        t0 = time.perf_counter()
        top = _top(request)
        return _timed(await run_in_threadpool(service.search_image, bytes(body), top), t0)

    async def similar(request: Request) -> Response:
        image_id, top = _image_id(request), _top(request)
        t0 = time.perf_counter()
        return _timed(await run_in_threadpool(service.similar, image_id, top), t0)

    async def explain(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(service.explain, _image_id(request)))

    async def explain_text(request: Request) -> Response:
        text = request.query_params.get("text")
        if text is None:
            raise UsageError("give the text to explain: /api/explain?text=TEXT")
        return JSONResponse(await run_in_threadpool(service.explain_text, text))

    async def heatmap(request: Request) -> Response:
        image_id = _image_id(request)
        word = request.query_params.get("word", "").strip()
        if not word:
            raise UsageError("give the word to draw: /api/heatmap/ID?word=WORD")
        png = await run_in_threadpool(service.heatmap_png, image_id, word)
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    async def image(request: Request) -> Response:
        data, media_type = await run_in_threadpool(service.large, _image_id(request))
        return Response(data, media_type=media_type, headers={"Cache-Control": "private, max-age=600"})

    async def thumb(request: Request) -> Response:
        path = await run_in_threadpool(service.thumbnail, _image_id(request))
        return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=600"})

    async def not_found(request: Request, exc: Exception) -> Response:
        if request.url.path.startswith("/api/"):
            return _error(404, "not found")
        return PlainTextResponse("Not found", status_code=404)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 404:
            return await not_found(request, exc)
        return _error(exc.status_code, exc.detail)

    async def usage_error(request: Request, exc: Exception) -> Response:
        return _error(400, str(exc))

    async def lexsearch_error(request: Request, exc: Exception) -> Response:
        logger.warning("%s: %s", request.url.path, exc)
        return _error(500, str(exc))

    routes = [
        Route("/", page),
        Route("/static/{name}", static_file),
        Route("/api/info", info),
        Route("/api/alive", alive),
        Route("/api/search", api_search),
        Route("/api/search/image", api_search_image, methods=["POST"]),
        Route("/api/similar/{id}", similar),
        Route("/api/explain", explain_text),
        Route("/api/explain/{id}", explain),
        Route("/api/heatmap/{id}", heatmap),
        Route("/dupes", dupes_page),
        Route("/api/dupes", api_dupes),
        Route("/image/{id}", image),
        Route("/thumb/{id}", thumb),
    ]
    middleware = [Middleware(_SecurityHeaders, collection=collection_tag(folder))]
    if allowed_hosts:
        middleware.insert(0, Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts))
    return Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={
            HTTPException: http_error,
            NotFound: not_found,
            UsageError: usage_error,
            DataError: usage_error,  # an upload that is not a readable image
            LexsearchError: lexsearch_error,
        },
    )


class _SecurityHeaders:
    """Plain ASGI middleware: the CSP and nosniff headers, and the collection's name, on every response."""

    def __init__(self, app: Any, collection: str) -> None:
        self.app = app
        self.collection = collection.encode("ascii")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", _CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (COLLECTION_HEADER.lower().encode(), self.collection),
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _with_meta(params: Any) -> str:
    """``q`` with the photo-filter parameters as its own words (``lexsearch.search.meta``): the search
    then reads them as it reads them typed into the text. A folder is a name or an absolute path here."""
    from lexsearch.search.meta import with_meta

    keys = ("after", "before", "camera", "folder", "orientation", "sort")
    return with_meta(params.get("q", ""), resolve=False, **{k: params.get(k) for k in keys})


def _float(raw: str, name: str = "min_score") -> float:
    try:
        return float(raw)
    except ValueError:
        raise UsageError(f"{name} must be a number, not {raw!r}.") from None


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _timed(payload: Any, t0: float, headers: dict[str, str] | None = None) -> JSONResponse:
    """The JSON answer with its server time (encode + search) in a Server-Timing header."""
    ms = 1000 * (time.perf_counter() - t0)
    return JSONResponse(payload, headers={"Server-Timing": f"search;dur={ms:.2f}", **(headers or {})})
