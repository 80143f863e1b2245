"""create_app: the FastAPI application (REST, OpenAI, admin, health, metrics) over one Engine.

    uvicorn --factory service.app:app_from_env      # config from ASR_* environment variables
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service import admin, http_api, openai_api, realtime_ws, web
from service.config import ServiceConfig
from service.engine import Engine
from service.http_errors import install_error_handlers

log = logging.getLogger(__name__)


def create_app(config: ServiceConfig, engine: Engine | None = None) -> FastAPI:
    """Builds the app.

    Args:
        config: service settings.
        engine: an engine the caller owns (``run_server`` shares it with gRPC) and stops
            itself; None makes the app build one, load its models in the background (so
            /health/live answers at once and /health/ready turns 200 when warm), and drain
            and stop it on shutdown.
    """
    owned = engine is None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.engine = engine or Engine(config)
        loading = None
        if owned:
            loading = asyncio.create_task(_load(app.state.engine))
        try:
            yield
        finally:
            if owned:
                loading.cancel()
                await asyncio.gather(loading, return_exceptions=True)
                await app.state.engine.drain_and_stop(config.drain_timeout_s)

    app = FastAPI(title="QuartzNet ASR", version="1.0", lifespan=lifespan,
                  description="CTC speech recognition: REST, OpenAI-compatible transcription, admin and metrics.")
    install_error_handlers(app)
    app.include_router(http_api.router)
    app.include_router(openai_api.router)
    app.include_router(realtime_ws.router)
    app.include_router(web.router)
    admin.install_admin(app)
    return app


async def _load(engine: Engine) -> None:
    try:
        await engine.load_initial_models()
    except Exception:  # noqa: BLE001 - kept in engine.startup_error and shown by /health/ready
        log.exception("loading the default model failed")


def app_from_env() -> FastAPI:
    """uvicorn ``--factory`` entry point: config from the environment."""
    return create_app(ServiceConfig())
