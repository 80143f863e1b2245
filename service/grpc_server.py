"""The gRPC server: asr.v1.SpeechRecognition plus grpc.health.v1 and reflection, on the app's event loop.

``service/server.py`` calls ``start_grpc`` once the Engine's models are loaded, and stops it on shutdown:

    grpc_server = await start_grpc(engine, config)   # serving on config.grpc_port
    ...
    await stop_grpc(grpc_server, config.drain_timeout_s)   # or grpc_server.stop(grace_s)

Health reports SERVING while ``engine.ready`` (a model is loaded and the engine is not
draining), so ``engine.begin_drain()`` alone already turns it NOT_SERVING.
"""

from __future__ import annotations

import logging
import weakref

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service.asr_pb import asr_pb2_grpc
from service.auth import check_api_key
from service.config import ServiceConfig
from service.errors import UnauthenticatedError
from service.grpc_api import SERVICE_NAME, SpeechRecognitionServicer, drain_requests

log = logging.getLogger(__name__)

# Recognize carries the whole file in one message. gRPC's default 4 MiB holds only about
# 131 s of 16 kHz 16-bit PCM; 32 MiB holds 17 minutes, and the configured upload limit
# (plus room for the config fields) always fits.
_MIN_MESSAGE_BYTES = 32 * 1024 * 1024
_MESSAGE_OVERHEAD_BYTES = 1024 * 1024
# Long-lived streams behind NATs and load balancers need keepalive pings; clients may ping
# every 30 s without being told "too_many_pings".
_KEEPALIVE_OPTIONS = (
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 30_000),
    ("grpc.keepalive_permit_without_calls", 1),
)



class _EngineHealth(health.aio.HealthServicer):
    """grpc.health.v1 whose status follows ``engine.ready`` (loaded and not draining) on every call."""

    def __init__(self, engine) -> None:
        super().__init__()
        self.engine = engine

    async def sync(self) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if self.engine.ready
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in ("", SERVICE_NAME):  # "" is the whole server's health
            await self.set(name, status)

    async def Check(self, request, context):
        await self.sync()
        return await super().Check(request, context)

    async def Watch(self, request, context):
        await self.sync()
        return await super().Watch(request, context)


# The services API keys guard: ours and Riva's; health and reflection stay open.
_GUARDED = (f"/{SERVICE_NAME}/", "/nvidia.riva.asr.RivaSpeechRecognition/")


class _ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Refuses asr.v1 calls without a valid API key (service.auth) with UNAUTHENTICATED; health and reflection stay open.

    A refusal is counted like any other failed call (``asr_requests_total``, ``asr_errors_total``).
    """

    def __init__(self, keys, metrics) -> None:
        self.keys = keys
        self.metrics = metrics

    async def intercept_service(self, continuation, handler_call_details):
        if not handler_call_details.method.startswith(_GUARDED):
            return await continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata or ())
        try:
            check_api_key(self.keys, metadata.get("authorization"))
        except UnauthenticatedError as exc:
            message = str(exc)
            handler = await continuation(handler_call_details)

            async def deny(request, context):
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

            async def deny_stream(request_iterator, context):
                await drain_requests(request_iterator)  # then the client gets this status, not a failed write
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
                yield  # an async generator, as streaming handlers are

            streaming = handler is not None and handler.request_streaming
            self.metrics.count_error(exc.code)
            self.metrics.observe_request("grpc_stream" if streaming else "grpc", grpc.StatusCode.UNAUTHENTICATED.name, 0.0)
            if streaming:
                return grpc.stream_stream_rpc_method_handler(deny_stream)
            return grpc.unary_unary_rpc_method_handler(deny)
        return await continuation(handler_call_details)


_health_by_server: "weakref.WeakKeyDictionary[grpc.aio.Server, _EngineHealth]" = weakref.WeakKeyDictionary()


def _riva_api():
    """(service.riva_api, riva_asr_pb2_grpc), or None where nvidia-riva-client is not installed."""
    try:
        from riva.client.proto import riva_asr_pb2_grpc

        from service import riva_api
    except ImportError as exc:
        log.warning("Riva-compatible gRPC disabled: %s (pip install nvidia-riva-client)", exc)
        return None
    return riva_api, riva_asr_pb2_grpc


def max_message_bytes(config: ServiceConfig) -> int:
    """The largest request message the server accepts."""
    return max(_MIN_MESSAGE_BYTES, config.max_audio_bytes + _MESSAGE_OVERHEAD_BYTES)


async def start_grpc(engine, config: ServiceConfig) -> grpc.aio.Server:
    """Builds, binds and starts the gRPC server on ``config.http_host:config.grpc_port``.

    Args:
        engine: the started service.engine.Engine.
        config: limits (``max_audio_bytes``) and the port.

    Returns:
        The running server; pass it to ``stop_grpc``.

    Raises:
        RuntimeError: the port could not be bound.
    """
    limit = max_message_bytes(config)
    interceptors = [_ApiKeyInterceptor(config.api_keys, engine.metrics)] if config.api_keys else []
    server = grpc.aio.server(interceptors=interceptors,
                             options=[("grpc.max_receive_message_length", limit),
                                      ("grpc.max_send_message_length", limit), *_KEEPALIVE_OPTIONS])
    servicer = SpeechRecognitionServicer(engine)
    asr_pb2_grpc.add_SpeechRecognitionServicer_to_server(servicer, server)
    riva_modules = _riva_api()
    services = [SERVICE_NAME]
    if riva_modules is not None:
        riva_api, riva_grpc = riva_modules
        riva_grpc.add_RivaSpeechRecognitionServicer_to_server(riva_api.RivaSpeechRecognitionServicer(servicer), server)
        services.append(riva_api.SERVICE_NAME)
    health_servicer = _EngineHealth(engine)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((*services, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = f"{getattr(config, 'grpc_host', config.http_host)}:{config.grpc_port}"
    try:
        if config.tls_cert_file is not None:
            credentials = grpc.ssl_server_credentials(
                [(config.tls_key_file.read_bytes(), config.tls_cert_file.read_bytes())])
            server.add_secure_port(address, credentials)
        else:
            server.add_insecure_port(address)
    except RuntimeError as e:
        raise RuntimeError(f"cannot bind gRPC to {address}: {e}") from None
    await server.start()
    await health_servicer.sync()
    _health_by_server[server] = health_servicer
    log.info("gRPC serving %s on %s (max message %d bytes)", ", ".join(services), address, limit)
    return server


async def stop_grpc(server: grpc.aio.Server, grace_s: float | None) -> None:
    """Reports NOT_SERVING, stops taking calls, and lets open calls finish for up to ``grace_s``."""
    health_servicer = _health_by_server.pop(server, None)
    if health_servicer is not None:
        await health_servicer.enter_graceful_shutdown()
    await server.stop(grace_s)
