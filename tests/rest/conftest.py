"""A real ``flatscope serve`` process with HTTP on, shared by the REST tests."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from processes import ServerProcess


@pytest.fixture(scope="session")
def rest_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """gRPC and HTTP on one process (so answers compare on the same model), with /metrics."""
    log = tmp_path_factory.mktemp("rest") / "serve.log"
    with ServerProcess(log, http=True, metrics=True).serving() as server:
        yield server


def images(batch: int = 1, seed: int = 0) -> np.ndarray:
    """A batch of random images of the embedded model's input shape."""
    return np.random.default_rng(seed).random((batch, 48, 48, 3), dtype=np.float32)
