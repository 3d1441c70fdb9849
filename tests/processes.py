"""Real ``flatscope`` processes for tests: servers, CLI commands, their memory and metrics."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from flatscope.client import Client

FLATSCOPE = Path(sys.executable).parent / "flatscope"
START_TIMEOUT = 120.0  # seconds for a server process to open its port and load the model
STOP_TIMEOUT = 30.0  # seconds for a server process to exit after SIGTERM (grace is 10 s)
CLI_TIMEOUT = 60.0  # seconds for one client command
LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+) \(gRPC")


def clean_env(**variables: str) -> dict[str, str]:
    """This process's environment without FLATSCOPE_* variables, plus ``variables``.

    The HTTP port is off unless ``variables`` set it: tests never take the fixed 8501.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLATSCOPE_")}
    return {**env, "FLATSCOPE_HTTP_PORT": "0", **variables}


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago (for /metrics, where 0 means off)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """``flatscope serve --port 0 --metrics-port 0 FLAGS`` in a child process, logging to a file.

    Args:
        log_path: Where the process's stdout and stderr go.
        flags: More ``serve`` flags; a flag given twice takes its last value.
        env: FLATSCOPE_* (or other) variables for the process.
        metrics: Serve /metrics on a free port (``metrics_port``).
        client: Keyword arguments of the Client that waits for SERVING (TLS).
        python: The interpreter to run flatscope with (another virtual environment's).
        http: Serve HTTP/REST on a free port (``http_port``, ``http_url``).
    """

    def __init__(
        self,
        log_path: Path,
        *flags: str,
        env: dict[str, str] | None = None,
        metrics: bool = False,
        client: dict | None = None,
        python: str | Path = sys.executable,
        http: bool = False,
    ):
        self.log_path = log_path
        self.metrics_port = free_port() if metrics else 0
        self.http_port = free_port() if http else 0
        self.http_url = f"http://127.0.0.1:{self.http_port}"
        self.client_options = client or {}
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [str(python), "-m", "flatscope", "serve", "--port", "0"]
                + ["--metrics-port", str(self.metrics_port)]
                + ["--http-port", str(self.http_port)]
                + list(flags),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=clean_env(**(env or {})),
            )
        self.target = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, pattern: re.Pattern[str], timeout: float = START_TIMEOUT) -> re.Match:
        """Polls the log until ``pattern`` matches; fails if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            match = pattern.search(self.log())
            if match:
                return match
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {pattern.pattern!r} in the log after {timeout} s:\n{self.log()}")
            time.sleep(0.1)

    def start(self) -> ServerProcess:
        """Waits for the port to open and health to report SERVING."""
        port = int(self.wait_for_log(LISTENING).group(1))
        assert port > 0
        self.target = f"127.0.0.1:{port}"
        with self.client() as client:
            client.wait_ready(timeout=START_TIMEOUT)
        return self

    def client(self, **options) -> Client:
        """A new client of this server (with the TLS options it was started with)."""
        return Client(self.target, **{**self.client_options, **options})

    def rss_bytes(self) -> int:
        """The server's resident set size, from /proc."""
        pages = int(Path(f"/proc/{self.pid}/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        """One sample scraped from the server's /metrics; 0 when it is not there yet."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as reply:
            text = reply.read().decode()
        wanted = labels or {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in wanted.items()
                ):
                    return sample.value
        return 0.0

    @contextlib.contextmanager
    def serving(self) -> Iterator[ServerProcess]:
        """Starts the server, yields it, then stops it (SIGTERM; a kill if it hangs)."""
        try:
            yield self.start()
        finally:
            try:
                self.stop()
            finally:
                self.kill()

    def stop(self) -> int:
        """Sends SIGTERM and returns the exit code; kills the process if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT)
            pytest.fail(f"server ignored SIGTERM for {STOP_TIMEOUT} s:\n{self.log()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT)


def flatscope(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Runs the ``flatscope`` console script and captures its output."""
    return subprocess.run(
        [str(FLATSCOPE), *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        env=clean_env(**(env or {})),
    )


def flatscope_all(*commands: list[str]) -> list[subprocess.CompletedProcess]:
    """Runs several ``flatscope`` commands at once (each starts slowly); their results."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(commands)) as pool:
        return list(pool.map(lambda args: flatscope(*args), commands))


def assert_one_line_error(stderr: str, *parts: str) -> None:
    """``stderr`` is one line, starting with "flatscope", holding every one of ``parts``."""
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith("flatscope"), stderr
    for part in parts:
        assert part in lines[0], stderr
