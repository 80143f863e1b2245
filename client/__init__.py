"""Clients of the ASR service: REST (httpx) and gRPC (unary and streaming), plus the `asr client` CLI.

``GrpcClient`` loads the generated gRPC code (and its grpcio and protobuf version checks) only when it is used,
so the REST client works wherever httpx does.
"""

from client.rest import RestClient

__all__ = ["GrpcClient", "RestClient"]


def __getattr__(name: str):
    if name == "GrpcClient":
        from client.grpc_client import GrpcClient

        return GrpcClient
    raise AttributeError(f"module 'client' has no attribute {name!r}")
