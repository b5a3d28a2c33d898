"""`python -m trainguard.alert_sender`: deliver one alert read as JSON from stdin via apprise.

Prints one JSON line `{"ok": bool, "errors": [...]}`; see `trainguard.alerts` for why this is a
separate process.
"""

from __future__ import annotations

import json
import logging
import sys


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def main() -> int:
    try:
        request = json.loads(sys.stdin.read())
        urls, title, body = request["urls"], request["title"], request["body"]
        severity = request.get("severity", "failure")
    except (ValueError, KeyError, TypeError) as exc:
        print(json.dumps({"ok": False, "errors": [f"bad request: {exc}"]}))
        return 1
    try:
        import apprise
    except ImportError:
        print(json.dumps({"ok": False, "errors": ["apprise is not installed"]}))
        return 1
    collect = _Collect()
    logging.getLogger("apprise").addHandler(collect)
    logging.getLogger("apprise").setLevel(logging.WARNING)
    notifier = apprise.Apprise()
    errors = [
        f"not an apprise URL: {url.split('://')[0]}://..." for url in urls if not notifier.add(url)
    ]
    ok = False
    if len(notifier):
        ok = bool(notifier.notify(body=body, title=title, notify_type=severity))
    errors += collect.lines
    print(json.dumps({"ok": ok and not errors, "errors": errors}))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
