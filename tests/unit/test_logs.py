"""Log records as text or JSON lines, tagged with the call's request id; when tracing turns on."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from service import logs
from service.config import ServiceConfig
from service.server import tracing_from


class FakeCall:
    request_id = "req-1"

    def trace_ids(self) -> tuple[str, str] | None:
        return ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")


@pytest.fixture
def output() -> Iterator[io.StringIO]:
    """The root logger's handler, as logs.configure leaves it, writing to a string."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers = []
    stream = io.StringIO()
    yield stream
    root.handlers, root.level = saved[0], saved[1]


def configure(stream: io.StringIO, **options: str) -> None:
    logging.getLogger().handlers = []  # pytest's capture handlers: basicConfig would add none
    logs.configure(ServiceConfig(**options), worker=None)  # type: ignore[arg-type]
    logging.getLogger().handlers[0].setStream(stream)  # type: ignore[attr-defined]


def test_json_lines_carry_the_fields_and_the_current_calls_ids(output: io.StringIO) -> None:
    configure(output, log_format="json")
    token = logs.CURRENT_CALL.set(FakeCall())
    try:
        logging.getLogger("vae.access").info(
            "Decode OK", extra={"method": "Decode", "code": "OK", "items": 3}
        )
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logging.getLogger("service.errors").exception("unexpected")
    finally:
        logs.CURRENT_CALL.reset(token)
    access, error = (json.loads(line) for line in output.getvalue().splitlines())
    assert access["logger"] == "vae.access" and access["level"] == "INFO"
    assert access["message"] == "Decode OK" and access["timestamp"].endswith("+00:00")
    assert (access["method"], access["code"], access["items"]) == ("Decode", "OK", 3)
    assert access["request_id"] == "req-1" and access["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert "RuntimeError: boom" in error["exception"] and error["request_id"] == "req-1"


def test_text_lines_name_the_request_id_when_there_is_one(output: io.StringIO) -> None:
    configure(output)
    log = logging.getLogger("service.x")
    log.info("no call")
    token = logs.CURRENT_CALL.set(FakeCall())
    log.info("in a call")
    logs.CURRENT_CALL.reset(token)
    plain, tagged = output.getvalue().splitlines()
    assert plain.endswith("INFO service.x: no call")
    assert tagged.endswith("INFO service.x [req-1]: in a call")


@pytest.mark.parametrize("options", [{"log_format": "xml"}, {"access_log_sample": 1.5}])
def test_invalid_settings_say_what_is_allowed(options: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="must be"):
        ServiceConfig(**options)  # type: ignore[arg-type]


def test_tracing_is_off_unless_an_endpoint_asks_for_it() -> None:
    config = ServiceConfig()
    assert tracing_from(config, {}) is None
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}
    assert tracing_from(config, {**endpoint, "OTEL_SDK_DISABLED": "true"}) is None
    assert tracing_from(config, {**endpoint, "OTEL_TRACES_EXPORTER": "none"}) is None
    tracing = tracing_from(config, endpoint)
    assert tracing is not None
    tracing.shutdown()
