"""``python -m sample_app``: start the web server or the worker, per ``ROLE``.

Configuration comes only from the environment.  A malformed variable stops
start-up with a one-line message naming it and exit code 2.
"""

from __future__ import annotations

import logging
import os
import sys

import uvicorn

from sample_app.config import ConfigError, parse_env
from sample_app.web import create_app

EXIT_BAD_CONFIG = 2


def main() -> int:
    """Parse the environment and serve until stopped."""
    try:
        config = parse_env(os.environ)
    except ConfigError as exc:
        print(f"sample_app: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # Bind all interfaces: in a pod, probes and the Service come from outside.
    uvicorn.run(
        create_app(config),
        host="0.0.0.0",  # noqa: S104
        port=config.port,
        access_log=False,
        log_level="info",
        lifespan="on",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
