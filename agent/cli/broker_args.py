"""The broker options of the operator commands (``push``, ``fleet ...``): the same connection
as ``mqtt`` in agent.yaml / fleet.yaml — URL, TLS with a client certificate, username and a
password read from a file or an environment variable. There is no ``--mqtt-password``: a
password on the command line shows in ``ps`` and in shell history.

:func:`add_broker_arguments` adds the options; :func:`broker_from_args` turns them into a
checked :class:`~agent.config.broker.MqttConfig` (or None without ``--mqtt-url``). Every bad
value is a :class:`BrokerArgumentError` (exit 2) naming the option — never a traceback, never
the password.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agent.config.broker import MqttConfig
from agent.core.errors import EdgeAgentError

__all__ = ["BrokerArgumentError", "add_broker_arguments", "broker_from_args"]


class BrokerArgumentError(EdgeAgentError):
    """A broker option is missing, malformed or names an unreadable file."""

    exit_code = 2


_OPTIONS = {
    "url": "--mqtt-url",
    "username": "--mqtt-username",
    "password_file": "--mqtt-password-file",
    "password_env": "--mqtt-password-env",
    "protocol": "--mqtt-protocol",
    "tls.ca_file": "--mqtt-ca",
    "tls.cert_file": "--mqtt-cert",
    "tls.key_file": "--mqtt-key",
    "tls": "--mqtt-ca/--mqtt-cert/--mqtt-key",
    "cert_file": "--mqtt-cert",
}
"""MqttConfig field (dotted) → the option that sets it, for error messages."""


_HELP = "see the broker options in --help"
_FIXES = {
    "--mqtt-url": "write mqtt://host:port or mqtts://host:port; the user goes in --mqtt-username "
    "and the password in --mqtt-password-file or --mqtt-password-env",
    "--mqtt-password-env": "name an environment variable (letters, digits, '_')",
}


class _NoClearPassword(argparse.Action):
    """``--mqtt-password``: refused with the fix, without repeating the value."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: object, values: object, opt: object = None
    ) -> None:
        parser.error(
            "--mqtt-password is not offered (a password on the command line shows in ps and "
            "shell history): use --mqtt-password-file FILE or --mqtt-password-env VAR"
        )


def add_broker_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``--mqtt-*`` options to ``parser`` (in their own help section); a clear-text
    ``--mqtt-password`` is refused (exit 2) without echoing it."""
    g = parser.add_argument_group(
        "broker",
        "The MQTT broker, as in agent.yaml's mqtt section. The password is read from a file "
        "or an environment variable, never given on the command line.",
    )
    g.add_argument("--mqtt-url", default=None, help="broker, mqtt://host:port or mqtts://...")
    g.add_argument("--mqtt-username", default=None, help="broker user name")
    pw = g.add_mutually_exclusive_group()
    pw.add_argument(
        "--mqtt-password-file", default=None, help="file holding the password (one line)"
    )
    pw.add_argument(
        "--mqtt-password-env", default=None, help="environment variable holding the password"
    )
    g.add_argument("--mqtt-password", action=_NoClearPassword, help=argparse.SUPPRESS)
    g.add_argument("--mqtt-ca", default=None, help="mqtts: PEM CA bundle of the broker")
    g.add_argument("--mqtt-cert", default=None, help="mqtts: PEM client certificate")
    g.add_argument("--mqtt-key", default=None, help="mqtts: PEM key of the client certificate")
    g.add_argument(
        "--mqtt-insecure-hostname",
        action="store_true",
        help="mqtts: do not check the broker's hostname against its certificate",
    )
    g.add_argument(
        "--mqtt-protocol",
        choices=("auto", "5", "3.1.1"),
        default="auto",
        help="MQTT version (auto: 5, falling back to 3.1.1)",
    )


def _tls_args(args: argparse.Namespace) -> dict[str, Any] | None:
    files = {"ca_file": args.mqtt_ca, "cert_file": args.mqtt_cert, "key_file": args.mqtt_key}
    given = {k: Path(v) for k, v in files.items() if v}
    if not given and not args.mqtt_insecure_hostname:
        return None
    for key, path in given.items():
        if not path.is_file():
            option = _OPTIONS[f"tls.{key}"]
            raise BrokerArgumentError(
                f"{option}: {path} is not a file", fix=f"pass the PEM file's path to {option}"
            )
    return {**given, "check_hostname": not args.mqtt_insecure_hostname}


def _option_of(error: Any) -> tuple[str, str]:
    """(option, message) of one pydantic error; the input value is never used."""
    msg = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    key = ".".join(str(p) for p in error.get("loc", ()))
    tagged = re.match(r"^\[([\w.]+)\] (.*)$", msg, re.DOTALL)
    if tagged:
        key = ".".join(p for p in (key, tagged.group(1)) if p)
        msg = tagged.group(2)
    option = _OPTIONS.get(key) or _OPTIONS.get(key.rsplit(".", 1)[-1], "--mqtt-*")
    return option, msg


def _validated(fields: dict[str, Any]) -> MqttConfig:
    try:
        return MqttConfig.model_validate(fields)
    except ValidationError as exc:
        option, msg = _option_of(exc.errors(include_input=False)[0])
        raise BrokerArgumentError(f"{option}: {msg}", fix=_FIXES.get(option, _HELP)) from None


def broker_from_args(args: argparse.Namespace) -> MqttConfig | None:
    """The broker the ``--mqtt-*`` options name, checked; None without ``--mqtt-url``.

    The password (``--mqtt-password-file`` / ``--mqtt-password-env``) is read here, so a
    missing file or variable is a usage error before anything is signed or sent; the returned
    config holds it in ``password`` (memory only) for the transport."""
    others = (args.mqtt_username, args.mqtt_password_file, args.mqtt_password_env)
    tls = (args.mqtt_ca, args.mqtt_cert, args.mqtt_key, args.mqtt_insecure_hostname)
    if not args.mqtt_url:
        if any(others) or any(tls):
            raise BrokerArgumentError(
                "the --mqtt-* options need --mqtt-url", fix="add --mqtt-url mqtts://host:8883"
            )
        return None
    fields: dict[str, Any] = {
        "enabled": True,
        "url": args.mqtt_url,
        "username": args.mqtt_username,
        "password_file": Path(args.mqtt_password_file) if args.mqtt_password_file else None,
        "password_env": args.mqtt_password_env,
        "protocol": args.mqtt_protocol,
        "tls": _tls_args(args),
    }
    cfg = _validated(fields)
    if cfg.password_file is not None or cfg.password_env is not None:
        if cfg.username is None:
            raise BrokerArgumentError(
                "a broker password needs a user name", fix="add --mqtt-username NAME"
            )
        try:
            secret = cfg.secret_password()
        except EdgeAgentError as exc:
            text = exc.message.replace("mqtt.password_file", "--mqtt-password-file")
            text = text.replace("mqtt.password_env", "--mqtt-password-env")
            raise BrokerArgumentError(
                text, fix="pass a readable file or a set variable", path=exc.path
            ) from None
        cfg = cfg.model_copy(
            update={"password": secret, "password_file": None, "password_env": None}
        )
    return cfg
