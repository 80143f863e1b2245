"""Optional API keys for the transcription APIs (``ASR_API_KEYS``): one check for REST, OpenAI, WebSocket and gRPC.

Keys travel as ``Authorization: Bearer <key>`` (gRPC: the ``authorization`` metadata entry).
Off when no key is configured. Every configured key is compared in constant time
(``hmac.compare_digest``), so neither a match nor a mismatch returns early. The admin API has
its own token (service.admin) and health, metrics and the web page stay open.
"""

from __future__ import annotations

import hmac

from pydantic import SecretStr

from service.errors import UnauthenticatedError


def check_api_key(keys: list[SecretStr], authorization: str | None) -> None:
    """Raises UnauthenticatedError unless ``authorization`` is ``Bearer <one of keys>`` (or no keys are set)."""
    if not keys:
        return
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise UnauthenticatedError("this server needs an API key: send 'Authorization: Bearer <key>'")
    offered = given.strip().encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(offered, key.get_secret_value().encode())
    if not matched:
        raise UnauthenticatedError("invalid API key")
