"""The watchdog's own log: logs/watchdog.log (rotated) and stderr, as text or JSON lines."""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
from pathlib import Path

from trainguard.watchdog_status import utc_now


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"at": utc_now(), "level": record.levelname, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(log_file: Path, *, as_json: bool, level: int = logging.INFO) -> None:
    formatter: logging.Formatter = (
        JsonFormatter() if as_json else logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    )
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handlers: list[logging.Handler] = [
        logging.handlers.RotatingFileHandler(log_file, maxBytes=10 * 2**20, backupCount=5),
        logging.StreamHandler(sys.stderr),
    ]
    for handler in handlers:
        handler.setFormatter(formatter)
    # "trainguard" carries what the shared package logs on the watchdog's behalf (alerts).
    for name in ("daemon_watchdog", "trainguard"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        for handler in handlers:
            logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False
