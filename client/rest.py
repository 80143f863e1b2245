"""REST client: POST a file to the service's OpenAI-style /v1/audio/transcriptions route."""

from __future__ import annotations

from pathlib import Path

import httpx

from client.closing import Closing


class RestError(RuntimeError):
    """The server answered with an error status; ``status`` is the HTTP code."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class RestClient(Closing):
    """Talks to one server over HTTP.

    Args:
        url: base URL, e.g. "http://127.0.0.1:8000".
        timeout_s: per-request timeout in seconds.
        api_key: sent as "Authorization: Bearer ..." when set.
        transport: an httpx transport (tests pass ``httpx.ASGITransport(app)``).
    """

    def __init__(self, url: str = "http://127.0.0.1:8000", *, timeout_s: float = 300.0, api_key: str | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), timeout=timeout_s, headers=headers, transport=transport)

    def close(self) -> None:
        self._http.close()

    def transcribe(self, path: str | Path, *, model: str | None = None, word_timestamps: bool = True) -> dict:
        """Transcribes one file; returns the server's verbose JSON (text, words, duration, model...).

        Raises:
            RestError: an HTTP error status (its ``detail`` as the message).
            httpx.HTTPError: the server could not be reached.
        """
        path = Path(path)
        data = {"response_format": "verbose_json"}
        if model:
            data["model"] = model
        if word_timestamps:
            data["timestamp_granularities[]"] = "word"
        with path.open("rb") as f:
            response = self._http.post("/v1/audio/transcriptions", data=data,
                                       files={"file": (path.name, f, "application/octet-stream")})
        if response.status_code >= 400:
            raise RestError(response.status_code, _error_message(response))
        return response.json()


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}: {response.text.strip()[:200]}"
    detail = body.get("detail", body.get("error", body)) if isinstance(body, dict) else body
    if isinstance(detail, dict):
        detail = detail.get("message", detail)
    return f"HTTP {response.status_code}: {detail}"
