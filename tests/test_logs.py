"""Log formats: one line per event, as text or JSON, whatever the message holds."""

from __future__ import annotations

import json
import logging

import pytest

from flatscope.logs import JsonFormatter, TextFormatter, without_native_noise


def record(message: str, *args, exc_info=None) -> logging.LogRecord:
    return logging.LogRecord(
        "flatscope.test", logging.ERROR, __file__, 1, message, args, exc_info=exc_info
    )


def failure() -> logging.LogRecord:
    try:
        raise ValueError("bad\nthing")
    except ValueError as exc:
        return record(
            "%s failed",
            "/flatscope.v1.ModelService/Predict",
            exc_info=(type(exc), exc, exc.__traceback__),
        )


def test_json_is_one_object_per_line_with_the_traceback_inside():
    line = JsonFormatter().format(failure())
    assert "\n" not in line
    event = json.loads(line)
    assert event["level"] == "ERROR"
    assert event["logger"] == "flatscope.test"
    assert event["message"] == "/flatscope.v1.ModelService/Predict failed"
    assert event["time"].endswith("+00:00")
    assert "Traceback" in event["exception"]
    assert "ValueError: bad\nthing" in event["exception"]


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()], ids=["text", "json"])
def test_a_line_break_in_a_message_cannot_forge_a_line(formatter: logging.Formatter):
    line = formatter.format(record("model %r", "x\nERROR forged line\r\n"))
    assert "\n" not in line and "\r" not in line


def test_text_keeps_the_traceback_on_the_line():
    line = TextFormatter().format(failure())
    assert "\n" not in line
    assert " ERROR flatscope.test: /flatscope.v1.ModelService/Predict failed\\nTraceback" in line
    assert "ValueError: bad\\nthing" in line


def test_native_start_up_noise_is_dropped_and_our_lines_and_real_errors_kept():
    held = [
        b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
        b"I0000 00:00:1796216469.748407    5701 port.cc:153] oneDNN custom operations are on.\n",
        b"I0000 00:00:1796216469.810625    5701 cpu_feature_guard.cc:227] This TensorFlow binary\n",
        b"To enable the following instructions: AVX2 FMA, in other operations, rebuild.\n",
        b"2026-12-02 13:01:15,167 INFO flatscope.grpc.server: listening on 127.0.0.1:1\n",
        b"E0000 00:00:1796216475.189799    5917 cuda_platform.cc:52] failed call to cuInit: "
        b"INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n",
        b"W1202 13:05:04.062941   10871 log.cc:110] Log level DEBUG is not suitable\n",
        b'{"level": "INFO", "message": "serving"}\n',
        b"E1202 13:05:04.068969   10871 chttp2_server.cc:1] a real native error\n",
        b"  its second line\n",
        b"2025-09-17 14:44:05.157831: I external/local_xla/xla/tsl/cuda/cudart_stub.cc:32] x\n",
        b"Traceback (most recent call last):\n",
    ]
    kept = list(without_native_noise(held))
    assert kept == [held[4], held[7], held[8], held[9], held[11]]
