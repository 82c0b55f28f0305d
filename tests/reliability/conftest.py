"""Fixtures of the cluster tests that the reliability tests share: a real RabbitMQ and Sentinel."""

from tests.cluster.conftest import broker, sentinel_watching

__all__ = ["broker", "sentinel_watching"]
