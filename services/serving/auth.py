"""Bearer API keys for every ``/v1`` route.

Keys come from Settings (``SYNTHRAY_API_KEYS``, comma-separated) and/or a key file, one per
line (``SYNTHRAY_API_KEY_FILE``; a mounted Secret in a cluster, ``{state_dir}/api-keys``
locally). The file is re-read at most every few seconds, so a rotated Secret takes effect
without a restart. Every candidate key is compared with :func:`hmac.compare_digest`
(constant time), and all of them are compared, so timing reveals neither a key's prefix nor
which key matched.
"""

from __future__ import annotations

import hmac
import os
import secrets
import time
from pathlib import Path

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from infra.settings import Settings, get_settings

_RELOAD_S = 5.0


def ensure_local_key(settings: Settings) -> Path | None:
    """Write a random key to the key file when no key is configured at all; its path, else None.

    So a freshly started local API is never open, and clients on this machine (the CLI,
    ``make demo``) find the key through the same settings.
    """
    if settings.api_key_list():
        return None
    path = settings.resolved_api_key_file
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_urlsafe(32) + "\n")
    os.replace(tmp, path)  # atomic: a reader sees no key or the whole key
    return path


def client_key(settings: Settings) -> str | None:
    """The key a local client sends: the first configured one."""
    keys = settings.api_key_list()
    return keys[0] if keys else None


class KeyChecker:
    """Callable FastAPI dependency body: 401 unless the bearer token is a configured key."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._keys: list[bytes] = []
        self._loaded_at = float("-inf")

    def _current(self) -> list[bytes]:
        if time.monotonic() - self._loaded_at > _RELOAD_S:
            self._keys = [k.encode() for k in self._settings.api_key_list()]
            self._loaded_at = time.monotonic()
        return self._keys

    def check(self, credentials: HTTPAuthorizationCredentials | None) -> None:
        challenge = {"WWW-Authenticate": "Bearer"}
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise HTTPException(401, "missing API key: send 'Authorization: Bearer <key>'", headers=challenge)
        token = credentials.credentials.encode()
        matched = False
        for key in self._current():
            matched |= hmac.compare_digest(token, key)
        if not matched:
            raise HTTPException(401, "invalid API key", headers=challenge)


_bearer = HTTPBearer(auto_error=False, description="An API key from SYNTHRAY_API_KEYS or the key file.")
_checker: KeyChecker | None = None


async def require_key(credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
    """FastAPI dependency of every keyed route (``/v1`` and the study owner's): 401 without a configured key.

    ``async`` so FastAPI calls it on the event loop: a plain ``def`` dependency is sent to a
    thread pool, a hop per request (the check is a few comparisons, and the key file is re-read
    at most every few seconds)."""
    global _checker
    if _checker is None:
        _checker = KeyChecker(get_settings())
    _checker.check(credentials)
