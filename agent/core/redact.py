"""The one home of redaction: credentials out of text (URLs, GStreamer pipelines, messages) and
secret-looking keys out of configuration documents, before either is logged or sent."""

from __future__ import annotations

import re
from typing import Any, cast

MASK = "***"

# userinfo runs to the last "@" before the host (passwords may hold a raw "@")
_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s?#\"']*@")
_GST_SECRET = re.compile(
    r"(?P<key>\b(?:user-id|user-pw|proxy-id|proxy-pw|password|passwd))(?P<eq>\s*=\s*)"
    r"(?P<val>\"[^\"]*\"|'[^']*'|[^\s!]+)"
)
_QUERY_SECRET = re.compile(
    r"(?P<key>[?&;](?:user|username|password|passwd|pwd|pass|token|auth|key|api_key|apikey)=)"
    r"[^&\s!\"'#]*",
    re.IGNORECASE,
)
SECRET_KEYS = ("password", "secret", "token", "passphrase", "private_key")
"""A mapping key holding one of these (case-insensitive) has its value masked."""


def redact_text(text: str) -> str:
    """Remove credentials from a URL, a GStreamer pipeline or a message that contains one.

    ``rtsp://user:pw@host/x`` → ``rtsp://***@host/x``; ``user-id=a user-pw=b`` →
    ``user-id=*** user-pw=***``; ``?user=a&password=b`` → ``?user=***&password=***``.
    """
    out = _URL_USERINFO.sub(rf"\g<scheme>{MASK}@", text)
    out = _GST_SECRET.sub(rf"\g<key>\g<eq>{MASK}", out)
    return _QUERY_SECRET.sub(rf"\g<key>{MASK}", out)


def is_secret_key(key: object) -> bool:
    """Whether a mapping key names a secret (``mqtt.password``, ``api_token``...)."""
    return isinstance(key, str) and any(s in key.lower() for s in SECRET_KEYS)


def redact_config(value: Any) -> Any:
    """Copy of ``value`` (nested dicts and lists) with the non-null values of secret-looking
    keys replaced by ``"***"``."""
    if isinstance(value, dict):
        mapping = cast("dict[Any, Any]", value)
        return {
            k: MASK if is_secret_key(k) and v is not None else redact_config(v)
            for k, v in mapping.items()
        }
    if isinstance(value, list):
        return [redact_config(v) for v in cast("list[Any]", value)]
    return value
