"""A Python client for flatscope: numpy arrays in, numpy arrays and dataclasses out.

Example:
    >>> from flatscope.client import Client
    >>> with Client("127.0.0.1:8500") as client:
    ...     result = client.inspect(images, include_source=True)
    ...     layout = result.layout
    ...     layout.formula                      # 'flat = h*768 + w*32 + c'
    ...     layout.source_index(13)             # (0, 0, 13)
    ...     result.flattened[0, layout.flat_index((1, 2, 3))]
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import numpy as np

from flatscope.grpc import converters
from flatscope.metadata import ModelDescription
from flatscope.results import InspectResult, Prediction
from flatscope.settings import MiB
from flatscope.v1 import model_service_pb2 as pb
from flatscope.v1 import model_service_pb2_grpc

if TYPE_CHECKING:
    from flatscope.picture import Picture

__all__ = ["Client", "InspectResult", "ModelDescription", "Prediction"]


class Client:
    """A blocking client of one flatscope server.

    Args:
        target: ``host:port`` of the server.
        timeout: Deadline for each call, in seconds.
        max_message_bytes: Largest message sent or received.
        model_name: Model to address; empty addresses whichever the server serves.
        tls: Connect with TLS. Implied by any of the three PEM arguments; alone it
            trusts the system's CA certificates.
        root_certificates: PEM CA certificates to verify the server with.
        private_key: PEM key of ``certificate_chain``.
        certificate_chain: PEM client certificate, for servers that require one
            (mutual TLS).

    Raises:
        grpc.RpcError: From every call, carrying the server's status and message.
    """

    def __init__(
        self,
        target: str = "127.0.0.1:8500",
        *,
        timeout: float = 30.0,
        max_message_bytes: int = 64 * MiB,
        model_name: str = "",
        tls: bool = False,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
    ):
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        if tls or root_certificates or private_key or certificate_chain:
            credentials = grpc.ssl_channel_credentials(
                root_certificates, private_key, certificate_chain
            )
            self._channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._stub = model_service_pb2_grpc.ModelServiceStub(self._channel)
        self._timeout = timeout
        self.model_name = model_name

    def predict(self, inputs: np.ndarray) -> Prediction:
        """Runs the model on a batch ``(N, *input_shape)`` of float32 inputs."""
        request = pb.PredictRequest(model_name=self.model_name, inputs=converters.to_tensor(inputs))
        return converters.prediction(self._stub.Predict(request, timeout=self._timeout))

    def inspect(
        self,
        inputs: np.ndarray,
        *,
        layer: str = "",
        include_source: bool = False,
        coordinate_start: int = 0,
        coordinate_count: int = 0,
        include_dense_kernel: bool = False,
    ) -> InspectResult:
        """Runs the model once and returns what its Flatten layer saw, with the layout.

        Args:
            inputs: A batch ``(N, *input_shape)`` of float32 inputs.
            layer: The Flatten layer; empty for the model's only one.
            include_source: Also return the tensor that entered the Flatten layer.
            coordinate_start: First flat index to list the source index of.
            coordinate_count: How many to list.
            include_dense_kernel: Also return the kernel of the Dense layer after it
                (``result.dense``), e.g. for :meth:`plot_inspect`.
        """
        request = pb.InspectRequest(
            model_name=self.model_name,
            inputs=converters.to_tensor(inputs),
            layer=layer,
            include_source=include_source,
            coordinate_start=coordinate_start,
            coordinate_count=coordinate_count,
            include_dense_kernel=include_dense_kernel,
        )
        return converters.inspection(self._stub.Inspect(request, timeout=self._timeout))

    def plot_inspect(
        self,
        inputs: np.ndarray,
        path: Path | str,
        *,
        layer: str = "",
        flat_index: int | None = None,
    ) -> Picture:
        """Inspects ``inputs`` and draws the answer into ``path`` (.png or .svg).

        The picture shows example 0: its input, the feature map that entered the
        Flatten layer, the flat vector, ``flat_index`` (default: the largest feature)
        in both, and the next Dense layer's weights read back onto the feature map.
        Needs matplotlib (``pip install 'flatscope[plot]'``).

        Returns:
            What was drawn (see :class:`flatscope.picture.Picture`).
        """
        from flatscope.plot import plot_inspect

        result = self.inspect(inputs, layer=layer, include_source=True, include_dense_kernel=True)
        return plot_inspect(result, inputs, Path(path), flat_index)

    def metadata(self) -> ModelDescription:
        """Describes the served model."""
        request = pb.GetModelMetadataRequest(model_name=self.model_name)
        reply = self._stub.GetModelMetadata(request, timeout=self._timeout)
        return converters.description(reply)

    def health(self, service: str = "") -> str:
        """The server's health status, e.g. "SERVING" or "NOT_SERVING".

        Args:
            service: The service asked about; empty for the whole server.
        """
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self._channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=self._timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Blocks until the server's health check reports SERVING.

        Raises:
            TimeoutError: It did not within ``timeout`` seconds.
        """
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self._channel)
        request = health_pb2.HealthCheckRequest(service="")
        try:
            for reply in stub.Watch(request, timeout=timeout, wait_for_ready=True):
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
        raise TimeoutError(f"server not SERVING after {timeout} s")

    def close(self) -> None:
        """Closes the channel."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
