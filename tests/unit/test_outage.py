"""The outage tracker: one line when the API is lost, one when it answers again."""

from __future__ import annotations

import logging

import pytest
import urllib3
from kubernetes.client.exceptions import ApiException

from z2m import outage


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    "exc",
    [
        urllib3.exceptions.MaxRetryError(None, "/api", ConnectionRefusedError(111, "refused")),
        urllib3.exceptions.ProtocolError("Connection aborted."),
        ConnectionResetError(104, "reset"),
        TimeoutError(),
        ApiException(status=503, reason="Service Unavailable"),
        ApiException(status=429, reason="storage is (re)initializing"),
        ApiException(status=500, reason="etcdserver: request timed out"),
    ],
)
def test_an_unanswering_api_is_an_outage(exc: BaseException) -> None:
    assert outage.is_outage(exc)


@pytest.mark.parametrize(
    "exc",
    [
        ApiException(status=422, reason="Unprocessable Entity"),
        ApiException(status=403, reason="Forbidden"),
        ApiException(status=404, reason="Not Found"),
        KeyError("spec"),
        ValueError("bad"),
    ],
)
def test_a_refused_or_broken_request_is_not_an_outage(exc: BaseException) -> None:
    assert not outage.is_outage(exc)


def test_many_failures_and_successes_make_two_lines(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    tracker = outage.Tracker(clock=clock, logger=logging.getLogger("test.outage"))
    with caplog.at_level(logging.INFO, logger="test.outage"):
        tracker.answered()  # nothing was lost: nothing to say
        for _ in range(50):
            tracker.failed("ConnectionRefusedError: [Errno 111] Connection refused")
        clock.now += 21
        for _ in range(5):
            tracker.answered()
    assert [r.getMessage() for r in caplog.records] == [
        "lost the Kubernetes API (ConnectionRefusedError: [Errno 111] Connection refused); "
        "retrying quietly until it answers",
        "the Kubernetes API answers again after 21 s",
    ]
    assert not tracker.down


def test_the_cause_is_the_innermost_reason_in_one_line() -> None:
    refused = ConnectionRefusedError(111, "Connection refused")
    wrapped = urllib3.exceptions.MaxRetryError(None, "/apis", refused)
    assert outage.describe(wrapped) == "ConnectionRefusedError: [Errno 111] Connection refused"
    assert outage.describe(ApiException(status=503, reason="Service Unavailable")) == (
        "HTTP 503 Service Unavailable"
    )


def test_kopfs_retry_lines_are_swallowed_and_reported_once() -> None:
    seen: list[str] = []

    class Recorder(outage.Tracker):
        def failed(self, cause: str) -> None:
            seen.append(cause)

    kept = logging.LogRecord("kopf", logging.ERROR, "", 0, "Handler failed", None, None)
    retry = logging.LogRecord(
        "kopf",
        logging.ERROR,
        "",
        0,
        "Request attempt #2/9 failed; will retry: GET https://x/api -> ClientConnectorError()",
        None,
        None,
    )
    original, outage.TRACKER = outage.TRACKER, Recorder()
    try:
        f = outage.KopfRetryFilter()
        assert f.filter(kept) and not f.filter(retry)
    finally:
        outage.TRACKER = original
    assert seen == ["ClientConnectorError()"]
