"""The standard protocols' messages and services, generated from protos/vendor.

KServe v2 with Triton's extensions (``grpc_service_pb2``, ``model_config_pb2``), TF Serving
(``tensorflow_serving.apis``) and the TensorFlow protos it uses (``tensorflow.core``), as
protos/generate.py writes them: their descriptors live in :data:`POOL`, not in protobuf's
default pool, so that they load beside tritonclient, kserve, tensorflow or
tensorflow-serving-api (whose generated code puts other versions of the same messages in the
default pool) and need none of them.
"""

from google.protobuf import any_pb2, descriptor_pool, wrappers_pb2

POOL = descriptor_pool.DescriptorPool()
# The well-known types the vendored files import.
for _well_known in (any_pb2, wrappers_pb2):
    POOL.AddSerializedFile(_well_known.DESCRIPTOR.serialized_pb)
