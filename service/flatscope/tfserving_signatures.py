"""TF Serving's signatures of the served model, shared by its gRPC and REST bindings.

``serving_default`` has the prediction as its one output, as a Keras model exported for
TF Serving has; each Flatten layer adds a signature named after it with the prediction
and the layer's two tensors (see :mod:`flatscope.signature`). Pure Python.
"""

from __future__ import annotations

from flatscope.errors import FailedPreconditionError, NotFoundError
from flatscope.signature import NamedOutput, Signature

SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"


def signature_outputs(signature: Signature, name: str) -> tuple[NamedOutput, ...]:
    """The outputs of the served signature ``name`` ("" for ``serving_default``).

    Raises:
        FailedPreconditionError: No signature has that name (TF Serving's status too).
    """
    if name in ("", SIGNATURE):
        return (signature.prediction,)
    layer = tuple(output for output in signature.outputs if output.layer == name)
    if not layer:
        raise FailedPreconditionError(
            f"serving signature '{name}' not found; the model's signatures are "
            f"{signature_names(signature)}"
        )
    return (signature.prediction, *layer)


def signature_names(signature: Signature) -> list[str]:
    """``serving_default``, then one signature per Flatten layer, named after it."""
    layers = dict.fromkeys(output.layer for output in signature.outputs if output.layer)
    return [SIGNATURE, *(layer for layer in layers if layer != SIGNATURE)]


def no_version_labels(label: str) -> NotFoundError:
    """The error for a request that addresses version label ``label``."""
    return NotFoundError(
        f"version label '{label}' is not served; this server has no version labels "
        "(address a version number, or none)"
    )
