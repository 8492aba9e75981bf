"""API keys: `--api-key-file PATH` (one key per line) guards POST /v1/predict with
`Authorization: Bearer <key>`, as text-embeddings-inference's `--api-key` does.

Only predictions are guarded: probes (/healthz, /readyz) and scrapes (/metrics) must work
without a key, and the playground, API docs and model facts stay readable so that a person
can find out how to call the API. Keys are compared in constant time, never logged, and
re-read on SIGHUP (a key file that no longer reads keeps the keys in force).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from server.errors import ApiError

log = logging.getLogger("server.auth")

GUARDED = frozenset({"predict"})  # route names
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="sentiment"'}


class KeyFileError(Exception):
    """The key file cannot be read or holds no key."""


def read_keys(path: Path) -> frozenset[bytes]:
    """The keys of `path`: one per line; blank lines and lines starting with # are skipped.
    Stored as SHA-256 digests, so that every comparison is of two 32-byte strings."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"--api-key-file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    keys = [line.strip() for line in text.splitlines()]
    keys = [key for key in keys if key and not key.startswith("#")]
    if not keys:
        raise KeyFileError(f"--api-key-file {path} holds no key (one per line)")
    return frozenset(_digest(key) for key in keys)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class ApiKeys:
    """The keys in force, read from `path` at start-up and on `reload()`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._keys = read_keys(path)

    def __len__(self) -> int:
        return len(self._keys)

    def reload(self) -> None:
        try:
            self._keys = read_keys(self.path)
        except KeyFileError as exc:
            log.warning("API keys not reloaded, the %d in force stay: %s", len(self._keys), exc)
            return
        log.info("API keys reloaded from %s: %d key(s)", self.path, len(self._keys))

    def allows(self, authorization: str) -> bool:
        """Whether an Authorization header value carries a valid bearer key."""
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        digest = _digest(token.strip())
        # Every key is compared, a match or not, so the time taken says nothing about which.
        found = False
        for key in self._keys:
            found |= hmac.compare_digest(digest, key)
        return found


def auth_middleware(keys: ApiKeys) -> Middleware:
    """Inside the error middleware, so that a refusal is the usual JSON error (and counted)."""

    @web.middleware
    async def check_key(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route.name
        if (
            route in GUARDED
            and request.method != "OPTIONS"
            and not keys.allows(request.headers.get("Authorization", ""))
        ):
            raise ApiError(
                401,
                "unauthorized",
                "a valid API key is required: send 'Authorization: Bearer <key>'",
                reason="unauthorized",
                headers=CHALLENGE,
            )
        return await handler(request)

    return check_key
