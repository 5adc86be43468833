"""Clients of the serving stack, TensorFlow-free: TensorProto conversion, gRPC, HTTP."""
