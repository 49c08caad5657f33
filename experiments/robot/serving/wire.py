"""openpi's wire format: msgpack, with numpy arrays as ``{b"__ndarray__": True, b"data", b"dtype", b"shape"}`` maps
and numpy scalars as ``{b"__npgeneric__": True, b"data", b"dtype"}`` (openpi_client/msgpack_numpy.py, 0.1.2).

Decoding is stricter than openpi's: only plain numeric/boolean dtypes, the byte count must match dtype x shape, and
arrays are copied out of the message (writable, aligned). A violation raises :class:`WireError`.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np

ALLOWED_DTYPE_KINDS = "biuf"  # bool, signed/unsigned integers, floats


class WireError(ValueError):
    """A message that does not follow the wire format."""


def _encode_numpy(value: Any) -> Any:
    if isinstance(value, np.ndarray | np.generic) and value.dtype.kind not in ALLOWED_DTYPE_KINDS:
        raise WireError(f"cannot send numpy dtype {value.dtype}: expected a numeric or boolean dtype")
    if isinstance(value, np.ndarray):
        array = np.ascontiguousarray(value)
        return {b"__ndarray__": True, b"data": array.tobytes(), b"dtype": array.dtype.str, b"shape": array.shape}
    if isinstance(value, np.generic):
        return {b"__npgeneric__": True, b"data": value.item(), b"dtype": value.dtype.str}
    return value


def _parse_dtype(raw: Any) -> np.dtype:
    try:
        dtype = np.dtype(raw.decode() if isinstance(raw, bytes) else raw)
    except (TypeError, ValueError, UnicodeDecodeError):
        raise WireError(f"unknown numpy dtype {raw!r}") from None
    if dtype.kind not in ALLOWED_DTYPE_KINDS:
        raise WireError(f"numpy dtype {dtype} is not allowed: expected a numeric or boolean dtype")
    return dtype


def _decode_numpy(obj: dict) -> Any:
    if b"__ndarray__" in obj:
        dtype = _parse_dtype(obj.get(b"dtype"))
        shape, data = obj.get(b"shape"), obj.get(b"data")
        if not isinstance(shape, list | tuple) or not all(isinstance(n, int) and n >= 0 for n in shape):
            raise WireError(f"array shape {shape!r}: expected a list of non-negative integers")
        if not isinstance(data, bytes) or len(data) != dtype.itemsize * math.prod(shape):  # Python ints: no overflow
            raise WireError(f"array data does not hold a {dtype} array of shape {tuple(shape)}")
        return np.frombuffer(data, dtype=dtype).reshape(shape).copy()
    if b"__npgeneric__" in obj:
        dtype, value = _parse_dtype(obj.get(b"dtype")), obj.get(b"data")
        try:
            return dtype.type(value)
        except (OverflowError, TypeError, ValueError):
            raise WireError(f"scalar {value!r} does not fit numpy dtype {dtype}") from None
    return obj


def packb(payload: Any) -> bytes:
    """Serialise ``payload`` (dicts, lists, strings, numbers, numpy arrays and scalars)."""
    return msgpack.packb(payload, default=_encode_numpy)


def unpackb(message: bytes) -> Any:
    """Deserialise a message written by :func:`packb` or by openpi's ``msgpack_numpy.packb``."""
    try:
        return msgpack.unpackb(message, object_hook=_decode_numpy)
    except WireError:
        raise
    except (ValueError, TypeError, OverflowError, RecursionError, msgpack.UnpackException) as error:
        raise WireError(f"not a msgpack message: {error}") from None
