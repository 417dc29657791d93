"""Conversion between kvmmu.v1 messages and the model (and server.ops records).

One module per resource family; each function is a pure mapping. Request
fields are validated here, raising `FieldError` with the proto field path.
"""
