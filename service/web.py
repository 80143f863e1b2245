"""The browser page at ``GET /``: upload or record audio, pick model and decoder, read the transcript.

Plain HTML/CSS/JS files in ``service/static/`` (no build step, nothing fetched from a CDN), served
by this router; ``create_app`` includes it:

    app.include_router(web.router)

The page only talks to the public API (``/v1/models``, ``/health/ready``, ``/transcribe``, and the
``/v1/realtime`` WebSocket while recording live), so it is also a working example of a browser client.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse

STATIC_DIR = Path(__file__).resolve().parent / "static"

# Browsers refuse ES/worklet modules served with a non-JavaScript type, and mimetypes' answer
# depends on the host's /etc/mime.types; pin the few types the page uses.
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
# The page is small and changes with the server version: always revalidate.
_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}

router = APIRouter(include_in_schema=False)


def _static_files() -> dict[str, Path]:
    """name -> path of every file shipped in static/ (flat folder; nothing else can be served)."""
    return {p.name: p for p in STATIC_DIR.iterdir() if p.is_file() and not p.name.startswith(".")}


def _file(path: Path) -> FileResponse:
    media_type = _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media_type, headers=_HEADERS)


@router.get("/")
async def index() -> FileResponse:
    return _file(STATIC_DIR / "index.html")


@router.get("/static/{name}")
async def static(name: str):
    path = _static_files().get(name)  # a lookup, not a path join: no traversal possible
    if path is None:
        return JSONResponse({"error": {"message": f"no static file {name!r}", "type": "invalid_request_error",
                                       "param": None, "code": "not_found"}}, 404)
    return _file(path)


__all__ = ["router", "STATIC_DIR"]
