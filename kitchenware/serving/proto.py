"""numpy <-> TensorFlow `TensorProto`, without importing TensorFlow itself.

The gateway talks to TF Serving but must stay small, so it cannot call
`tf.make_tensor_proto` / `tf.make_ndarray`. This module covers the four dtypes
the serving tier uses (uint8 pixels, float32 probabilities, int64, strings).

A TensorProto carries its values in one of two ways, and a decoder must accept
both: packed little-endian bytes in `tensor_content` (what `tf.make_tensor_proto`
writes for numbers), or the typed repeated fields (`int_val`, `float_val`,
`int64_val`, `string_val`), which is what TF Serving answers with. In the typed
fields fewer values than elements is legal: the last value fills the rest (one
value = a broadcast scalar), no value means zeros, as TensorFlow's C++ decoder does.

The protos come from `tensorflow.core.framework`: in the gateway tier the
`tensorflow-protobuf` package provides them without TensorFlow.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from kitchenware.core.errors import KitchenwareError

TensorProto = tensor_pb2.TensorProto

# numpy dtype -> (DataType enum, typed value field, little-endian numpy dtype)
_NUMERIC = {
    np.dtype(np.uint8): (types_pb2.DT_UINT8, "int_val", np.dtype("<u1")),
    np.dtype(np.float32): (types_pb2.DT_FLOAT, "float_val", np.dtype("<f4")),
    np.dtype(np.int64): (types_pb2.DT_INT64, "int64_val", np.dtype("<i8")),
}
_BY_ENUM = {enum: (dtype, field, wire) for dtype, (enum, field, wire) in _NUMERIC.items()}

DTYPE_NAMES = {
    types_pb2.DT_UINT8: "uint8",
    types_pb2.DT_FLOAT: "float32",
    types_pb2.DT_INT64: "int64",
    types_pb2.DT_STRING: "string",
}
ENCODINGS = ("content", "typed")


class ProtoError(KitchenwareError, ValueError):
    """A tensor that cannot be converted (unsupported dtype, inconsistent shape or content)."""


def dtype_name(enum: int) -> str:
    """'uint8', 'float32', 'int64', 'string', or TensorFlow's own enum name for others."""
    if enum in DTYPE_NAMES:
        return DTYPE_NAMES[enum]
    try:
        return types_pb2.DataType.Name(enum)
    except ValueError:
        return f"DataType({enum})"


def numpy_dtype(enum: int) -> np.dtype:
    """The numpy dtype `to_numpy` returns for a DataType enum (object for strings)."""
    if enum == types_pb2.DT_STRING:
        return np.dtype(object)
    if enum in _BY_ENUM:
        return _BY_ENUM[enum][0]
    raise ProtoError(f"unsupported tensor dtype {dtype_name(enum)}")


def _is_string_array(array: np.ndarray) -> bool:
    return array.dtype.kind in ("S", "U", "O")


def _as_bytes(value) -> bytes:
    if isinstance(value, bytes | bytearray | np.bytes_):
        return bytes(value)
    if isinstance(value, str | np.str_):
        return str(value).encode("utf-8")
    raise ProtoError(f"string tensors hold str or bytes, got {type(value).__name__}")


def shape_proto(shape: Sequence[int]) -> tensor_shape_pb2.TensorShapeProto:
    return tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=int(size)) for size in shape]
    )


def to_tensor_proto(values, dtype=None, encoding: str = "content") -> tensor_pb2.TensorProto:
    """Encode an array as a TensorProto.

    `encoding="content"` packs numbers into `tensor_content` (compact, what
    `tf.make_tensor_proto` does); `"typed"` fills the typed value fields (what TF
    Serving answers with). Strings always use `string_val`: TensorFlow has no
    packed form for them.
    """
    if encoding not in ENCODINGS:
        raise ProtoError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    array = np.asarray(values) if dtype is None else np.asarray(values, dtype=dtype)
    proto = tensor_pb2.TensorProto(tensor_shape=shape_proto(array.shape))
    if _is_string_array(array):
        proto.dtype = types_pb2.DT_STRING
        proto.string_val.extend(_as_bytes(v) for v in array.reshape(-1).tolist())
        return proto
    if array.dtype not in _NUMERIC:
        supported = ", ".join(str(d) for d in _NUMERIC)
        raise ProtoError(f"unsupported dtype {array.dtype}: expected {supported} or strings")
    enum, field, wire = _NUMERIC[array.dtype]
    proto.dtype = enum
    if encoding == "content":
        proto.tensor_content = array.astype(wire, copy=False).tobytes()
    else:
        getattr(proto, field).extend(array.reshape(-1).tolist())
    return proto


def tensor_shape(proto: tensor_pb2.TensorProto) -> tuple[int, ...]:
    """The concrete shape of a TensorProto (a tensor value has no unknown dimensions)."""
    if proto.tensor_shape.unknown_rank:
        raise ProtoError("tensor has unknown rank")
    shape = tuple(int(d.size) for d in proto.tensor_shape.dim)
    if any(size < 0 for size in shape):
        raise ProtoError(f"tensor shape {list(shape)} has an unknown dimension")
    return shape


def element_count(shape: Sequence[int]) -> int:
    """Elements of a shape, in Python integers (numpy's int64 product wraps around silently)."""
    count = 1
    for size in shape:
        count *= int(size)
    return count


def check_size(
    proto: tensor_pb2.TensorProto, max_elements: int | None
) -> tuple[tuple[int, ...], int]:
    """Shape and element count, refused before anything is allocated above `max_elements`.

    The typed fields may legally carry fewer values than elements (the last one
    repeats), so a message of a few bytes can describe a huge tensor: the shape,
    not the message size, decides how much memory decoding takes.
    """
    shape = tensor_shape(proto)
    count = element_count(shape)
    if max_elements is not None and count > max_elements:
        raise ProtoError(
            f"tensor shape {list(shape)} holds {count:,} elements; at most {max_elements:,} "
            "are accepted"
        )
    return shape, count


def _filled(values, count: int, dtype: np.dtype, what: str) -> np.ndarray:
    """TensorFlow's rule for typed fields: pad with the last value, zeros when empty."""
    if len(values) > count:
        raise ProtoError(f"{what} holds {len(values)} values for {count} elements")
    if dtype.kind == "O":
        array = np.empty(count, dtype=object)
        array[: len(values)] = list(values)
        array[len(values) :] = values[-1] if len(values) else b""
        return array
    try:
        array = np.zeros(count, dtype=dtype)
        if len(values):
            array[: len(values)] = np.asarray(values).astype(dtype, casting="unsafe")
            array[len(values) :] = array[len(values) - 1]
            if dtype.kind in "iu" and (
                min(values) < np.iinfo(dtype).min or max(values) > np.iinfo(dtype).max
            ):
                raise OverflowError(f"values outside {np.iinfo(dtype).min}..{np.iinfo(dtype).max}")
    except OverflowError as exc:
        raise ProtoError(f"{what} value out of range for {dtype}: {exc}") from None
    return array


def to_numpy(proto: tensor_pb2.TensorProto, max_elements: int | None = None) -> np.ndarray:
    """Decode a TensorProto; strings come back as an object array of `bytes`.

    `max_elements` refuses (ProtoError) a shape larger than that before allocating.
    """
    shape, count = check_size(proto, max_elements)
    if proto.dtype == types_pb2.DT_STRING:
        return _filled(proto.string_val, count, np.dtype(object), "string_val").reshape(shape)
    if proto.dtype not in _BY_ENUM:
        raise ProtoError(
            f"unsupported tensor dtype {dtype_name(proto.dtype)}: "
            "expected uint8, float32, int64 or string"
        )
    dtype, field, wire = _BY_ENUM[proto.dtype]
    if proto.tensor_content:
        expected = count * wire.itemsize
        if len(proto.tensor_content) != expected:
            raise ProtoError(
                f"tensor_content has {len(proto.tensor_content)} bytes, "
                f"shape {list(shape)} of {dtype} needs {expected}"
            )
        return np.frombuffer(proto.tensor_content, dtype=wire).astype(dtype).reshape(shape)
    return _filled(getattr(proto, field), count, dtype, field).reshape(shape)


def strings(array: np.ndarray) -> np.ndarray:
    """bytes elements -> str (UTF-8), for string tensors from `to_numpy`."""
    decoded = np.empty(array.size, dtype=object)
    decoded[:] = [b.decode("utf-8", "replace") for b in array.reshape(-1)]
    return decoded.reshape(array.shape)
