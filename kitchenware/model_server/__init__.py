"""Our TF-Serving-compatible model server (gRPC + REST) for where there is no Docker."""
