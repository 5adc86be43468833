"""The original project's `proto.py`: numpy -> TensorProto without TensorFlow.

Kept for scripts that did `from proto import np_to_protobuf`; the code lives in
`kitchenware.serving.proto` (which also decodes TF Serving's answers).
"""

from kitchenware.serving.proto import ProtoError, to_numpy, to_tensor_proto


def np_to_protobuf(data):
    """numpy array -> TensorProto (packed `tensor_content`), as the original helper did."""
    return to_tensor_proto(data)


__all__ = ["ProtoError", "np_to_protobuf", "to_numpy", "to_tensor_proto"]
