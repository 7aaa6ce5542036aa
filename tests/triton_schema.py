"""Triton's own ``model_config.proto`` for the tests: a ``config.pbtxt`` is valid when protobuf parses it into
``inference.ModelConfig`` (unknown fields, misspelled enum values and wrong types are errors).

The compiled schema ships in the plain ``tritonclient`` wheel as ``tritonclient/grpc/model_config_pb2.py``; its
package ``__init__`` refuses to import without the ``[grpc]`` extra (whose grpcio pins protobuf < 7), so the module
is loaded by file path: it needs only ``google.protobuf``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def model_config_pb2():
    tritonclient = pytest.importorskip("tritonclient")
    path = Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _plain(message) -> dict:
    """The set fields of a message as dicts / lists / ints / strings, enums by name, maps as dicts."""
    out = {}
    for fd, value in message.ListFields():
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            vfd = fd.message_type.fields_by_name["value"]
            out[fd.name] = {k: _plain(v) if vfd.message_type is not None else v for k, v in value.items()}
        elif fd.is_repeated:
            out[fd.name] = [_one(fd, v) for v in value]
        else:
            out[fd.name] = _one(fd, value)
    return out


def _one(fd, value):
    if fd.message_type is not None:
        return _plain(value)
    if fd.enum_type is not None:
        return fd.enum_type.values_by_number[value].name
    return value


def parse_config(text: str) -> dict:
    """Parse ``config.pbtxt`` text with Triton's schema (raises ``ParseError`` when invalid); the set fields."""
    from google.protobuf import text_format

    return _plain(text_format.Parse(text, model_config_pb2().ModelConfig()))
