"""flatscope: serve a Keras CNN over gRPC and see exactly what its Flatten layer does."""

__version__ = "0.1.0"
