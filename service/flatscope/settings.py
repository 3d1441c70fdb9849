"""Server settings: one typed object, read from FLATSCOPE_* variables and CLI flags."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import annotated_types
from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024


class Settings(BaseSettings):
    """Everything ``flatscope serve`` can be told.

    Each field is also the environment variable ``FLATSCOPE_<FIELD>`` and the flag
    ``--<field-with-dashes>``; a flag wins over the variable.
    """

    model_config = SettingsConfigDict(env_prefix="FLATSCOPE_", extra="forbid")

    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8500, ge=0, le=65535, description="gRPC port (0: any free port).")
    http_port: int = Field(
        8501,
        ge=0,
        le=65535,
        description="HTTP/REST port: KServe v2 and TF Serving REST and flatscope's own JSON "
        "API, on the same model, limits and TLS as gRPC (0: off).",
    )
    http_max_connections: int = Field(
        1000,
        ge=0,
        description="HTTP connections open at once; one beyond it is answered 503 and "
        "closed before it is read (0: no limit). Connections, not requests: keep-alive "
        "clients reuse theirs.",
    )
    http_idle_timeout: float = Field(
        75.0,
        gt=0,
        description="Seconds an HTTP connection may take to send a request's whole head, "
        "counted from its opening or its previous answer; then the server closes it. Keep "
        "it above the idle timeout of a load balancer in front. Also how long an answer "
        "may sit unread by a client that stopped reading.",
    )
    metrics_port: int = Field(
        8502, ge=0, le=65535, description="Port of the Prometheus /metrics endpoint (0: off)."
    )
    metrics_host: str = Field(
        "", description="Address of the /metrics endpoint (default: the same as --host)."
    )
    tls_cert: Path | None = Field(
        None, description="PEM certificate chain of the server; with --tls-key, serves TLS."
    )
    tls_key: Path | None = Field(None, description="PEM private key of --tls-cert.")
    tls_client_ca: Path | None = Field(
        None,
        description="PEM CA certificates; when set, clients must present a certificate "
        "signed by one of them (mutual TLS).",
    )
    model: Path | None = Field(
        None,
        description="The model file to serve: .keras, or legacy .h5 (Keras 2's HDF5); unset "
        "serves the embedded digits model.",
    )
    device: Literal["auto", "cpu", "gpu"] = Field(
        "auto",
        description="Where the model runs: a GPU when there is one (auto), or as forced. "
        "The backend is KERAS_BACKEND (tensorflow, jax or torch).",
    )
    event_loop: Literal["auto", "uvloop", "asyncio"] = Field(
        "auto",
        description="The asyncio event loop: uvloop (faster; auto uses it when installed) "
        "or Python's own.",
    )
    model_threads: int = Field(
        0,
        ge=0,
        description="Threads one forward pass may use (TensorFlow intra- and inter-op, "
        "torch); 0: one fewer than the CPUs this process may use, at least 1, which leaves "
        "a core to the gRPC event loop. JAX keeps XLA's own choice.",
    )
    model_name: str = Field(
        "", description="Name the model is served under (default: the model's own name)."
    )
    model_version: str = Field("1", description="Version reported with every reply.")
    max_batch_size: int = Field(
        256, ge=1, description="Most examples in one request and in one forward pass."
    )
    batching: bool = Field(True, description="Pack concurrent requests into shared forward passes.")
    batch_timeout: float | None = Field(
        None,
        ge=0,
        description="Seconds a request may wait for its batch to fill while the model is "
        "busy (never when it is idle). Unset: adaptive, a batch gathers the requests the "
        "server is still reading when the model frees, for 2 ms at most; 0: a pass starts "
        "whenever the model is free.",
    )
    max_enqueued_batches: int = Field(
        16,
        ge=1,
        description="Queued work is bounded to this many full batches; beyond it requests "
        "fail at once with RESOURCE_EXHAUSTED.",
    )
    max_concurrent_rpcs: int = Field(
        1024,
        ge=0,
        description="Most model calls served at once, counted from the moment a call's "
        "request has arrived; beyond it calls fail at once with RESOURCE_EXHAUSTED. Health "
        "checks are never refused (0: no limit).",
    )
    memory_budget: int = Field(
        1024 * MiB,
        ge=0,
        description="Bytes the server may hold for model calls, estimated from message "
        "sizes: half for requests being served, queued and run, half for replies not yet "
        "sent (replies up to 64 KiB always go); one connection may hold a quarter. Beyond "
        "it calls, or large replies, fail at once with RESOURCE_EXHAUSTED (0: no limit).",
    )
    receive_timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds a call's request message may take to arrive after its "
        "headers; a slower or stalled upload ends with DEADLINE_EXCEEDED.",
    )
    stream_idle_timeout: float = Field(
        60.0,
        ge=0,
        description="Seconds a request stream (KServe's ModelStreamInfer) may wait for its "
        "next message; then it ends with DEADLINE_EXCEEDED after its answers, and the "
        "client opens a new one. Bounds what idle streams, and messages stalled half-sent, "
        "hold (0: no limit, as Triton).",
    )
    max_streams_per_connection: int = Field(
        4096,
        ge=1,
        description="Calls one client connection may have open at once (HTTP/2 "
        "MAX_CONCURRENT_STREAMS). A client that opens more before it has read this setting "
        "gets UNAVAILABLE for the excess (the stream is refused), so keep it well above "
        "what one client sends at once; a call that sends no message costs little and "
        "ends after --receive-timeout (a request stream: --stream-idle-timeout).",
    )
    max_connections: int = Field(
        4096,
        ge=0,
        description="gRPC connections open at once; beyond it gRPC closes a new connection "
        "as it arrives and its client sees UNAVAILABLE (0: no limit). A connection must also "
        "finish its handshake (TLS, HTTP/2 preface) within --receive-timeout.",
    )
    max_connection_age: float = Field(
        300.0,
        gt=0,
        description="Seconds after which a connection is asked to close (GOAWAY); clients "
        "reconnect, which also spreads them over replicas behind a load balancer.",
    )
    max_connection_age_grace: float = Field(
        30.0,
        ge=0,
        description="Seconds calls on an aged connection get to finish before it is closed; "
        "this also bounds how long a reply that its client never reads is held.",
    )
    max_coordinates: int = Field(
        65536, ge=0, description="Most layout coordinate rows returned by one Inspect."
    )
    max_receive_message_bytes: int = Field(
        16 * MiB,
        ge=1024,
        description="Largest request message accepted, in bytes; gRPC refuses a larger one "
        "from its declared length, before reading it. Bytes of requests still arriving are "
        "outside --memory-budget: keep this near what a full batch of the model needs "
        "(256 examples of 48x48x3 float32: 7 MB raw, 9 MB typed).",
    )
    max_send_message_bytes: int = Field(
        64 * MiB, ge=1024, description="Largest reply message sent, in bytes."
    )
    tfserving_tensor_content: bool = Field(
        False,
        description="TF Serving Predict replies carry tensors as tensor_content (raw "
        "bytes) instead of typed float_val, as TF Serving's "
        "predict_response_tensor_serialization_option AS_PROTO_CONTENT.",
    )
    shutdown_delay: float = Field(
        0.0,
        ge=0,
        description="Seconds between SIGTERM and refusing new calls: health is NOT_SERVING "
        "at once, so that load balancers stop sending before the port closes.",
    )
    shutdown_grace: float = Field(
        10.0, ge=0, description="Seconds in-flight calls get to finish on shutdown."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO",
        description="Log level, in any case. DEBUG also shows TensorFlow's and gRPC's own "
        "start-up lines, which are left out otherwise.",
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="Log lines as text or as one JSON object each."
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_in_any_case(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("host", "metrics_host", mode="before")
    @classmethod
    def _address_without_brackets(cls, value: Any, info: ValidationInfo) -> Any:
        # "[::1]" as in URLs, or "::1": one form inside; gRPC's is made from it (ports.py).
        if not isinstance(value, str):
            return value
        text = value.strip()
        inner = text[1:-1] if text.startswith("[") and text.endswith("]") else text
        if "[" in inner or "]" in inner:
            raise ValueError(
                f"{text[:60]!r} is not an address; write IPv6 as ::1 or [::1], without a port"
            )
        # FLATSCOPE_HOST= (as a template leaves it) means unset, as for the paths below.
        return inner or cls.model_fields[info.field_name].default

    @field_validator("model", "tls_cert", "tls_key", "tls_client_ca", mode="before")
    @classmethod
    def _empty_path_is_unset(cls, value: Any) -> Any:
        # FLATSCOPE_MODEL= (as a template leaves it) means unset, not the current directory.
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _tls_files_go_together(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("set --tls-cert and --tls-key together (or neither)")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        return self


def choices(name: str) -> tuple[str, ...]:
    """The values a field takes when it takes one of a few (a Literal); () otherwise."""
    annotation = Settings.model_fields[name].annotation
    return get_args(annotation) if get_origin(annotation) is Literal else ()


def accepted(name: str) -> str:
    """What a field accepts, in words: "an integer from 0 to 65535", "one of auto, cpu, gpu"."""
    field = Settings.model_fields[name]
    annotation = field.annotation
    if choices(name):
        return "one of " + ", ".join(choices(name))
    if annotation is bool:
        return "true or false"
    if isinstance(annotation, types.UnionType):
        given = set(get_args(annotation)) - {type(None)}
        if Path in given:
            return "a file path"
        if len(given) == 1:  # optional: unset means a default policy (the description's)
            (annotation,) = given
    if annotation not in (int, float):
        return "text"
    noun = "an integer" if annotation is int else "a number"
    low = next(
        (c for c in field.metadata if isinstance(c, annotated_types.Ge | annotated_types.Gt)), None
    )
    high = next((c.le for c in field.metadata if isinstance(c, annotated_types.Le)), None)
    if isinstance(low, annotated_types.Ge) and high is not None:
        return f"{noun} from {low.ge} to {high}"
    if isinstance(low, annotated_types.Ge):
        return f"{noun}, {low.ge} or more"
    if isinstance(low, annotated_types.Gt):
        return f"{noun} above {low.gt}"
    return noun
