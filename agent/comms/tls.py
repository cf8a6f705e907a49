"""The TLS context of a broker connection, built from ``mqtt.tls`` with every file checked."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

from agent.comms.endpoint import parse_url
from agent.config.broker import MqttConfig
from agent.core.errors import CommsError


def _check_file(path: Path, key: str) -> None:
    if not path.is_file():
        raise CommsError(
            f"{key}: file {path} does not exist",
            fix=f"create it or point {key} at the right PEM file",
        )
    if not os.access(path, os.R_OK):
        raise CommsError(
            f"{key}: file {path} is not readable by this user",
            fix=f"fix the permissions of {path} (the agent's user must read it)",
        )


def _with_ca(ca_file: Path) -> ssl.SSLContext:
    _check_file(ca_file, "mqtt.tls.ca_file")
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
    except (ssl.SSLError, ValueError) as err:
        raise CommsError(
            f"mqtt.tls.ca_file: {ca_file} is not a PEM CA certificate ({err})",
            fix="point mqtt.tls.ca_file at the PEM file of the CA that signed the broker",
        ) from err
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _load_client_cert(ctx: ssl.SSLContext, cert_file: Path, key_file: Path) -> None:
    _check_file(cert_file, "mqtt.tls.cert_file")
    _check_file(key_file, "mqtt.tls.key_file")
    try:
        ctx.load_cert_chain(str(cert_file), str(key_file))
    except (ssl.SSLError, ValueError) as err:
        raise CommsError(
            f"mqtt.tls.cert_file/key_file: cannot load {cert_file} with {key_file} ({err})",
            fix="use a PEM client certificate and its matching unencrypted PEM key",
        ) from err


def tls_context(cfg: MqttConfig) -> ssl.SSLContext | None:
    """The TLS context for ``cfg`` (None for plain mqtt://); files are checked and loaded here,
    so a missing or bad file is a :class:`CommsError` naming the file and its config key."""
    _, _, use_tls = parse_url(cfg.url)
    if not use_tls:
        return None
    tls = cfg.tls
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls is not None and tls.ca_file is not None:
        ctx = _with_ca(tls.ca_file)
    if tls is not None and tls.cert_file is not None and tls.key_file is not None:
        _load_client_cert(ctx, tls.cert_file, tls.key_file)
    ctx.check_hostname = True if tls is None else tls.check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
