"""Notifications: one JSON POST per event to a webhook. A notification that cannot be delivered is logged,
never raised: an unreachable chat server must not fail (or hide the result of) a training run."""

from __future__ import annotations

import json
import logging
import urllib.request
from typing import Any

log = logging.getLogger("lmops.notify")


def post(url: str, event: str, payload: dict[str, Any], timeout_s: float = 10) -> bool:
    """POST ``{"event": event, **payload}`` as JSON; True when the receiver answered 2xx."""
    body = json.dumps({"event": event, **payload}, default=str).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", "User-Agent": "lmops"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return 200 <= resp.status < 300
    except Exception as exc:  # noqa: BLE001 - refused, timed out, 4xx/5xx: all logged the same way
        log.warning("notification %s to %s failed: %s", event, url, exc)
        return False
