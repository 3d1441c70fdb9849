"""The HTTP/REST transport: KServe v2 and TF Serving REST, and flatscope's own JSON API.

Served by aiohttp in the same event loop as grpc.aio, from the same core, admission and
metrics. Imports neither gRPC nor an ML framework.
"""
