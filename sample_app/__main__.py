"""``python -m sample_app``: start the web server or the worker, per ``ROLE``.

Configuration comes only from the environment.  A malformed variable stops
start-up with a one-line message naming it and exit code 2.

The web server drains on SIGTERM: for ``policy.DRAIN_SECONDS`` it keeps serving,
answers ``/readyz`` with 503 and closes each connection after its response, so
that clients move to the pods that stay; then it stops as uvicorn does (in-flight
requests finish). A second signal stops it at once.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from types import FrameType

import uvicorn
from starlette.applications import Starlette

from sample_app import policy
from sample_app.config import ConfigError, parse_env
from sample_app.web import State, create_app

EXIT_BAD_CONFIG = 2


class DrainingServer(uvicorn.Server):
    """uvicorn, with a drain period between the first stop signal and the stop."""

    def __init__(self, config: uvicorn.Config, state: State, drain_seconds: float) -> None:
        """Serve ``config``; ``state.draining`` is raised on the first signal."""
        super().__init__(config)
        self.state = state
        self.drain_seconds = drain_seconds
        self.drain_until: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """First signal: start draining. Later ones: stop as uvicorn would."""
        if self.drain_until is None and self.drain_seconds > 0:
            self.drain_until = time.monotonic() + self.drain_seconds
            self.state.draining = True
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        """Stop once the drain period is over."""
        if self.drain_until is not None and time.monotonic() >= self.drain_until:
            self.should_exit = True
        return await super().on_tick(counter)


def main() -> int:
    """Parse the environment and serve until stopped."""
    try:
        config = parse_env(os.environ)
    except ConfigError as exc:
        print(f"sample_app: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # Bind all interfaces: in a pod, probes and the Service come from outside.
    app: Starlette = create_app(config)
    server_config = uvicorn.Config(
        app,
        host="0.0.0.0",  # noqa: S104
        port=config.port,
        access_log=False,
        log_level="info",
        lifespan="on",
    )
    drain = policy.DRAIN_SECONDS if config.role == "web" else 0.0
    DrainingServer(server_config, app.state.z2m, drain).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
