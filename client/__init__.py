"""Clients of the ASR service: REST (httpx) and gRPC (unary and streaming), plus the `asr client` CLI."""

from client.grpc_client import GrpcClient
from client.rest import RestClient

__all__ = ["GrpcClient", "RestClient"]
