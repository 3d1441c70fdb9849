"""Log formats: one line per event, as text or JSON, whatever the message holds."""

from __future__ import annotations

import json
import logging

import pytest

from flatscope.logs import JsonFormatter, TextFormatter


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
