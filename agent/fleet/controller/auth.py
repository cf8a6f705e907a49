"""The API's bearer token: where it comes from and how a request's header is checked.

The token is read once at start from ``api.token_file`` (first line, surrounding blanks dropped)
or the environment variable ``api.token_env``; neither set means the API is read-only (every
POST is refused with 403). The comparison is constant-time (:func:`hmac.compare_digest`).
"""

from __future__ import annotations

import hmac
import logging
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from agent.config.fleet import ApiConfig
from agent.core.errors import EdgeAgentError

__all__ = ["MAX_TOKEN_BYTES", "MIN_TOKEN_CHARS", "bearer_matches", "load_token"]

log = logging.getLogger(__name__)

MAX_TOKEN_BYTES = 4096
MIN_TOKEN_CHARS = 16
"""Shorter tokens are refused at start: they can be guessed."""


def _checked(token: str, where: str) -> str:
    token = token.strip()
    if len(token) < MIN_TOKEN_CHARS:
        raise EdgeAgentError(
            f"the API token in {where} is shorter than {MIN_TOKEN_CHARS} characters",
            fix="write a long random token there, e.g. `openssl rand -hex 32`",
        )
    if any(c.isspace() or not c.isprintable() for c in token):
        raise EdgeAgentError(
            f"the API token in {where} holds blanks or control characters",
            fix="use a token of printable characters without spaces (e.g. hex)",
        )
    return token


def _from_file(path: Path) -> str:
    try:
        info = path.stat()
        with path.open("rb") as f:
            raw = f.read(MAX_TOKEN_BYTES + 1)
    except OSError as exc:
        raise EdgeAgentError(
            f"cannot read the API token file: {exc.strerror or exc}",
            fix="create it (e.g. `openssl rand -hex 32 > FILE; chmod 600 FILE`) or fix "
            "api.token_file",
            path=path,
        ) from exc
    if len(raw) > MAX_TOKEN_BYTES:
        raise EdgeAgentError(
            f"the API token file is larger than {MAX_TOKEN_BYTES} bytes",
            fix="put only the token in the file",
            path=path,
        )
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("API token file %s is readable by others; chmod 600 it", path)
    lines = raw.decode("utf-8", "replace").splitlines()
    return _checked(lines[0] if lines else "", str(path))


def load_token(api: ApiConfig, env: Mapping[str, str] | None = None) -> str | None:
    """The configured token, or None when neither ``token_file`` nor ``token_env`` is set."""
    if api.token_file is not None:
        return _from_file(api.token_file)
    if api.token_env is not None:
        value = (os.environ if env is None else env).get(api.token_env)
        if not value:
            raise EdgeAgentError(
                f"api.token_env names {api.token_env}, which is not set or empty",
                fix=f"export {api.token_env}=<a long random token> before starting the controller",
            )
        return _checked(value, f"${api.token_env}")
    return None


def bearer_matches(header: str | None, token: str) -> bool:
    """True when ``header`` is ``Bearer <token>`` (constant-time comparison of the token)."""
    if header is None:
        return False
    scheme, _, given = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode("utf-8", "replace"), token.encode("utf-8"))
