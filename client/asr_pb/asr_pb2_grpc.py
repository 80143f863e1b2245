"""The asr.v1 SpeechRecognition stub, servicer base and registration, made from the service's descriptor.

Written by hand for the reason asr_pb2 gives: protoc's generated module demands a grpcio at least as new
as the grpcio-tools that wrote it. Everything here is grpcio's public API, so any grpcio the client
supports works. Names and behaviour match a generated module's.
"""

from __future__ import annotations

import grpc
from google.protobuf import descriptor_pb2

from . import asr_pb2
from ._descriptor import SERIALIZED

SERVICE_NAME = "asr.v1.SpeechRecognition"
# (name, client streams, server streams, request class, response class) of each rpc, in the proto's order.
_METHODS = [
    (m.name, m.client_streaming, m.server_streaming, getattr(asr_pb2, m.input_type.rsplit(".", 1)[1]),
     getattr(asr_pb2, m.output_type.rsplit(".", 1)[1]))
    for service in descriptor_pb2.FileDescriptorProto.FromString(SERIALIZED).service
    if service.name == SERVICE_NAME.rsplit(".", 1)[1]
    for m in service.method
]
_CHANNEL_CALL = {(False, False): "unary_unary", (False, True): "unary_stream", (True, False): "stream_unary",
                 (True, True): "stream_stream"}
_HANDLER = {(False, False): grpc.unary_unary_rpc_method_handler, (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler, (True, True): grpc.stream_stream_rpc_method_handler}


class SpeechRecognitionStub:
    """``stub.Recognize(request)``, ``stub.StreamingRecognize(requests)``, ``stub.ListModels(request)``."""

    def __init__(self, channel: grpc.Channel) -> None:
        for name, client_streams, server_streams, request, response in _METHODS:
            call = getattr(channel, _CHANNEL_CALL[client_streams, server_streams])
            setattr(self, name, call(f"/{SERVICE_NAME}/{name}", request_serializer=request.SerializeToString,
                                     response_deserializer=response.FromString))


def _unimplemented(name: str):
    def method(self, request, context):
        context.set_code(grpc.StatusCode.UNIMPLEMENTED)
        context.set_details(f"{name} is not implemented")
        raise NotImplementedError(f"{name} is not implemented")

    method.__name__ = name
    return method


SpeechRecognitionServicer = type("SpeechRecognitionServicer", (), {
    "__doc__": "Base class of a SpeechRecognition server: override the rpcs it implements.",
    **{name: _unimplemented(name) for name, *_ in _METHODS}})


def add_SpeechRecognitionServicer_to_server(servicer, server: grpc.Server) -> None:  # noqa: N802 - protoc's name
    handlers = {name: _HANDLER[client_streams, server_streams](getattr(servicer, name),
                                                               request_deserializer=request.FromString,
                                                               response_serializer=response.SerializeToString)
                for name, client_streams, server_streams, request, response in _METHODS}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
