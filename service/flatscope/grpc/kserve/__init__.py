"""KServe v2 and Triton's extensions to it: ``inference.GRPCInferenceService``."""

from flatscope.grpc.kserve.servicer import SERVICE, SERVICE_NAME, InferenceServicer

__all__ = ["SERVICE", "SERVICE_NAME", "InferenceServicer"]
