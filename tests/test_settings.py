"""Settings: defaults, FLATSCOPE_* variables, explicit values and validation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from flatscope.settings import MiB, Settings, accepted


@pytest.fixture(autouse=True)
def no_flatscope_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from an environment without FLATSCOPE_* variables."""
    for name in list(os.environ):
        if name.startswith("FLATSCOPE_"):
            monkeypatch.delenv(name)


def test_defaults():
    settings = Settings()
    assert settings.host == "127.0.0.1"
    assert settings.port == 8500
    assert settings.model is None
    assert settings.model_name == ""
    assert settings.model_version == "1"
    assert settings.max_batch_size == 256
    assert settings.max_coordinates == 65536
    assert settings.max_receive_message_bytes == 16 * MiB
    assert settings.max_send_message_bytes == 64 * MiB
    assert settings.shutdown_grace == 10.0
    assert settings.log_level == "INFO"


def test_every_field_is_documented():
    for name, field in Settings.model_fields.items():
        assert field.description, name


def test_environment_variables(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FLATSCOPE_HOST", "0.0.0.0")
    monkeypatch.setenv("FLATSCOPE_PORT", "9001")
    monkeypatch.setenv("FLATSCOPE_MODEL", "/models/cnn.keras")
    monkeypatch.setenv("FLATSCOPE_MODEL_NAME", "digits-test")
    monkeypatch.setenv("FLATSCOPE_MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("FLATSCOPE_SHUTDOWN_GRACE", "0.5")
    monkeypatch.setenv("FLATSCOPE_LOG_LEVEL", "DEBUG")

    settings = Settings()
    assert settings.host == "0.0.0.0"
    assert settings.port == 9001
    assert settings.model == Path("/models/cnn.keras")
    assert settings.model_name == "digits-test"
    assert settings.max_batch_size == 7
    assert settings.shutdown_grace == 0.5
    assert settings.log_level == "DEBUG"


def test_explicit_value_wins_over_environment_variable(monkeypatch: pytest.MonkeyPatch):
    # The CLI passes flags as keyword arguments: this is "a flag wins over the variable".
    monkeypatch.setenv("FLATSCOPE_MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("FLATSCOPE_PORT", "9001")
    settings = Settings(max_batch_size="5")
    assert settings.max_batch_size == 5
    assert settings.port == 9001


def test_variable_without_prefix_is_ignored(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PORT", "9001")
    monkeypatch.setenv("MAX_BATCH_SIZE", "7")
    settings = Settings()
    assert settings.port == 8500
    assert settings.max_batch_size == 256


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"port": 70000}, "port"),
        ({"port": -1}, "port"),
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"max_coordinates": -1}, "max_coordinates"),
        ({"max_receive_message_bytes": 10}, "max_receive_message_bytes"),
        ({"shutdown_grace": -1.0}, "shutdown_grace"),
        ({"log_level": "TRACE"}, "log_level"),
        ({"port": "eighty"}, "port"),
    ],
)
def test_invalid_values_are_rejected(overrides: dict, field: str):
    with pytest.raises(ValidationError) as caught:
        Settings(**overrides)
    assert [error["loc"] for error in caught.value.errors()] == [(field,)]


@pytest.mark.parametrize(
    ("variable", "value", "field"),
    [
        ("FLATSCOPE_PORT", "70000", "port"),
        ("FLATSCOPE_MAX_BATCH_SIZE", "0", "max_batch_size"),
        ("FLATSCOPE_PORT", "eighty", "port"),
    ],
)
def test_invalid_environment_variables_are_rejected(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, field: str
):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert [error["loc"] for error in caught.value.errors()] == [(field,)]


def test_unknown_field_is_rejected():
    with pytest.raises(ValidationError):
        Settings(max_batch=5)


def test_reliability_and_security_defaults():
    settings = Settings()
    assert settings.shutdown_delay == 0.0
    assert settings.max_concurrent_rpcs == 1024
    assert settings.log_format == "text"
    assert (settings.tls_cert, settings.tls_key, settings.tls_client_ca) == (None, None, None)


def test_tls_settings_from_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FLATSCOPE_TLS_CERT", "/tls/server.crt")
    monkeypatch.setenv("FLATSCOPE_TLS_KEY", "/tls/server.key")
    monkeypatch.setenv("FLATSCOPE_TLS_CLIENT_CA", "/tls/ca.pem")
    monkeypatch.setenv("FLATSCOPE_LOG_FORMAT", "json")
    settings = Settings()
    assert settings.tls_cert == Path("/tls/server.crt")
    assert settings.tls_key == Path("/tls/server.key")
    assert settings.tls_client_ca == Path("/tls/ca.pem")
    assert settings.log_format == "json"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"tls_cert": "a.crt"}, "--tls-cert and --tls-key together"),
        ({"tls_key": "a.key"}, "--tls-cert and --tls-key together"),
        ({"tls_client_ca": "ca.pem"}, "--tls-client-ca needs --tls-cert and --tls-key"),
        ({"shutdown_delay": -1}, "shutdown_delay"),
        ({"max_concurrent_rpcs": -1}, "max_concurrent_rpcs"),
        ({"log_format": "xml"}, "log_format"),
    ],
)
def test_invalid_reliability_and_security_settings(overrides: dict, message: str):
    with pytest.raises(ValidationError, match=message):
        Settings(**overrides)


def test_log_level_in_any_case():
    assert Settings(log_level="debug").log_level == "DEBUG"
    assert Settings(log_level="Warning").log_level == "WARNING"


@pytest.mark.parametrize(
    ("field", "words"),
    [
        ("port", "an integer from 0 to 65535"),
        ("max_batch_size", "an integer, 1 or more"),
        ("batch_timeout", "a number, 0 or more"),
        ("receive_timeout", "a number above 0"),
        ("batching", "true or false"),
        ("device", "one of auto, cpu, gpu"),
        ("model", "a file path"),
        ("host", "text"),
    ],
)
def test_accepted_values_in_words(field: str, words: str):
    assert accepted(field) == words


def test_every_field_has_words_for_what_it_accepts():
    # A new kind of field (a list, a dict) needs its own words, not "text".
    for name, field in Settings.model_fields.items():
        if accepted(name) == "text":
            assert field.annotation is str, name
