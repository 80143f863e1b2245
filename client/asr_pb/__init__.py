"""asr.v1's messages and stubs for the client, built at import from the proto's descriptor (see asr_pb2)."""
