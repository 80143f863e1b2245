"""The asr.v1 messages and enums, built at import from asr.proto's descriptor (``_descriptor.py``).

protoc's generated modules refuse a protobuf runtime older than the protoc that wrote them (7.x when
scripts/gen_protos.sh last ran), which would keep this client out of every application pinned to
protobuf 4, 5 or 6, Riva's client among them. The descriptor API used here works alike on all of
them, so the client's floor is the protobuf its other code needs, not the generator's. The names
are those of a generated module (``asr_pb2.RecognizeRequest``, ``asr_pb2.LINEAR_PCM``); the type
hints in ``asr_pb2.pyi`` are protoc's.
"""

from __future__ import annotations

from google.protobuf import descriptor_pool, message_factory
from google.protobuf import duration_pb2  # noqa: F401 - registers google/protobuf/duration.proto, which asr.proto imports
from google.protobuf.internal import enum_type_wrapper

from ._descriptor import SERIALIZED

_POOL = descriptor_pool.Default()
try:
    DESCRIPTOR = _POOL.FindFileByName("asr/v1/asr.proto")  # the server's generated module got here first
except KeyError:
    _POOL.AddSerializedFile(SERIALIZED)
    DESCRIPTOR = _POOL.FindFileByName("asr/v1/asr.proto")


def _message_class(descriptor):
    make = getattr(message_factory, "GetMessageClass", None)  # protobuf >= 4.22
    return make(descriptor) if make else message_factory.MessageFactory(_POOL).GetPrototype(descriptor)


for _name, _descriptor in DESCRIPTOR.message_types_by_name.items():
    globals()[_name] = _message_class(_descriptor)
for _name, _descriptor in DESCRIPTOR.enum_types_by_name.items():
    globals()[_name] = enum_type_wrapper.EnumTypeWrapper(_descriptor)
    for _value in _descriptor.values:
        globals()[_value.name] = _value.number
del _name, _descriptor
