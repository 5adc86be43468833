"""numpy <-> TensorProto: property tests for both encodings, and agreement with TensorFlow's own."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tensorflow.core.framework import tensor_pb2, types_pb2

from kitchenware.serving import proto
from kitchenware.serving.proto import ProtoError, to_numpy, to_tensor_proto

NUMERIC = [np.uint8, np.float32, np.int64]
shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)


def wire(message: tensor_pb2.TensorProto) -> tensor_pb2.TensorProto:
    """Serialize and parse again, as gRPC does."""
    return tensor_pb2.TensorProto.FromString(message.SerializeToString())


@settings(max_examples=150, deadline=None)
@given(
    array=st.sampled_from(NUMERIC).flatmap(lambda dtype: hnp.arrays(dtype, shapes)),
    encoding=st.sampled_from(proto.ENCODINGS),
)
def test_numeric_round_trip(array, encoding):
    message = wire(to_tensor_proto(array, encoding=encoding))
    assert message.HasField("tensor_shape")
    assert bool(message.tensor_content) == (encoding == "content" and array.size > 0)
    back = to_numpy(message)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)  # NaN == NaN here


@settings(max_examples=100, deadline=None)
@given(
    array=hnp.arrays(
        object, shapes, elements=st.one_of(st.binary(max_size=8), st.text(max_size=8))
    ),
    encoding=st.sampled_from(proto.ENCODINGS),
)
def test_string_round_trip(array, encoding):
    back = to_numpy(wire(to_tensor_proto(array, encoding=encoding)))
    expected = [v if isinstance(v, bytes) else v.encode() for v in array.reshape(-1).tolist()]
    assert back.shape == array.shape
    assert back.reshape(-1).tolist() == expected


@settings(max_examples=60, deadline=None)
@given(array=st.sampled_from(NUMERIC).flatmap(lambda dtype: hnp.arrays(dtype, shapes)))
def test_agrees_with_tensorflow(array):
    """What TensorFlow writes we read, and what we write TensorFlow reads (both encodings)."""
    tf = pytest.importorskip("tensorflow")
    np.testing.assert_array_equal(to_numpy(tf.make_tensor_proto(array)), array)
    for encoding in proto.ENCODINGS:
        np.testing.assert_array_equal(
            tf.make_ndarray(to_tensor_proto(array, encoding=encoding)), array
        )


def test_tensorflow_string_tensors_decode():
    tf = pytest.importorskip("tensorflow")
    names = np.array([[b"cup", b"fork"], [b"glass", b"knife"]], dtype=object)
    np.testing.assert_array_equal(to_numpy(tf.make_tensor_proto(names)), names)
    assert tf.make_ndarray(to_tensor_proto(names)).tolist() == names.tolist()


def typed(dtype, shape, **values):
    message = tensor_pb2.TensorProto(dtype=dtype, tensor_shape=proto.shape_proto(shape))
    for field, items in values.items():
        getattr(message, field).extend(items)
    return message


@pytest.mark.parametrize(
    "message, expected",
    [
        (typed(types_pb2.DT_FLOAT, [2, 3], float_val=[0.5]), np.full((2, 3), 0.5, np.float32)),
        (typed(types_pb2.DT_UINT8, [4], int_val=[7]), np.full(4, 7, np.uint8)),
        (typed(types_pb2.DT_INT64, [3], int64_val=[1, 2]), np.array([1, 2, 2], np.int64)),
        (typed(types_pb2.DT_INT64, [2, 2]), np.zeros((2, 2), np.int64)),
        (typed(types_pb2.DT_STRING, [3], string_val=[b"x"]), np.array([b"x"] * 3, object)),
        (typed(types_pb2.DT_FLOAT, []), np.float32(0)),
    ],
    ids=[
        "float-scalar-broadcast",
        "uint8-broadcast",
        "pad-with-last",
        "no-values-zeros",
        "string-broadcast",
        "scalar-default",
    ],
)
def test_typed_fields_fill_like_tensorflow(message, expected):
    back = to_numpy(message)
    assert back.dtype == np.asarray(expected).dtype
    np.testing.assert_array_equal(back, expected)


@pytest.mark.parametrize(
    "message, needle",
    [
        (typed(types_pb2.DT_FLOAT, [2], float_val=[1, 2, 3]), "3 values for 2"),
        (typed(types_pb2.DT_UINT8, [1], int_val=[300]), "out of range"),
        (typed(types_pb2.DT_HALF, [1]), "unsupported tensor dtype DT_HALF"),
        (typed(types_pb2.DT_FLOAT, [-1, 2]), "unknown dimension"),
        (
            tensor_pb2.TensorProto(
                dtype=types_pb2.DT_FLOAT,
                tensor_shape=proto.shape_proto([2]),
                tensor_content=b"\0" * 5,
            ),
            "needs 8",
        ),
    ],
    ids=["too-many", "uint8-overflow", "dtype", "unknown-dim", "content-length"],
)
def test_bad_tensors_are_clear_errors(message, needle):
    with pytest.raises(ProtoError, match=needle):
        to_numpy(message)


def test_unknown_rank_and_unsupported_input():
    message = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT)
    message.tensor_shape.unknown_rank = True
    with pytest.raises(ProtoError, match="unknown rank"):
        to_numpy(message)
    with pytest.raises(ProtoError, match="unsupported dtype float64"):
        to_tensor_proto(np.zeros(2))
    with pytest.raises(ProtoError, match="encoding"):
        to_tensor_proto(np.zeros(2, np.uint8), encoding="packed")


def test_seed_proto_module_keeps_its_name():
    import proto as seed_proto  # the top-level module existing clients import

    pixels = np.arange(12, dtype=np.uint8).reshape(1, 2, 2, 3)
    message = seed_proto.np_to_protobuf(pixels)
    assert message.dtype == types_pb2.DT_UINT8
    np.testing.assert_array_equal(seed_proto.to_numpy(message), pixels)
