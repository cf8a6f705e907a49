"""The broker settings shared by agent.yaml, fleet.yaml and the ``--mqtt-*`` options: one
password source, read from a file or a variable when used, never echoed in an error."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.cli.broker_args import BrokerArgumentError, add_broker_arguments, broker_from_args
from agent.config.broker import MqttConfig
from agent.core.errors import EdgeAgentError

SECRET = "pw-Zq81-secret"


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_broker_arguments(parser)
    return parser.parse_args(list(argv))


def test_one_password_source_and_secret_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValidationError, match=r"\[password_file\] set one of"):
        MqttConfig(username="u", password="a", password_file=tmp_path / "pw")
    with pytest.raises(ValidationError):
        MqttConfig(username="u", password_env="NOT A NAME")
    pw = tmp_path / "pw"
    pw.write_text(SECRET + "\n")
    assert MqttConfig(username="u", password_file=pw).secret_password() == SECRET
    assert MqttConfig(username="u", password="inline").secret_password() == "inline"
    assert MqttConfig().secret_password() is None
    monkeypatch.setenv("EA_TEST_MQTT_PW", SECRET)
    assert MqttConfig(username="u", password_env="EA_TEST_MQTT_PW").secret_password() == SECRET
    monkeypatch.delenv("EA_TEST_MQTT_PW")
    with pytest.raises(EdgeAgentError, match="EA_TEST_MQTT_PW is not set") as unset:
        MqttConfig(username="u", password_env="EA_TEST_MQTT_PW").secret_password()
    assert unset.value.fix and "mqtt.password_file" in unset.value.fix
    with pytest.raises(EdgeAgentError, match=r"mqtt\.password_file: cannot read") as missing:
        MqttConfig(username="u", password_file=tmp_path / "nope").secret_password()
    assert missing.value.path == str(tmp_path / "nope") and missing.value.fix


def test_url_errors_never_repeat_the_password() -> None:
    for url in (f"mqtt://ops:{SECRET}@broker:1883", f"mqtts://{SECRET}@broker"):
        with pytest.raises(ValidationError) as err:
            MqttConfig(url=url)
        message = err.value.errors(include_input=False)[0]["msg"]
        assert SECRET not in message and "password_file or password_env" in message
        assert "***@broker" in message


def test_broker_from_args(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert broker_from_args(_args()) is None
    monkeypatch.setenv("EA_TEST_MQTT_PW", SECRET)
    cfg = broker_from_args(
        _args("--mqtt-url", "mqtt://h:1", "--mqtt-username", "ops",
              "--mqtt-password-env", "EA_TEST_MQTT_PW", "--mqtt-protocol", "3.1.1")
    )  # fmt: skip
    assert cfg is not None and cfg.enabled and cfg.protocol == "3.1.1"
    assert cfg.username == "ops" and cfg.secret_password() == SECRET
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    tls = broker_from_args(
        _args("--mqtt-url", "mqtts://h", "--mqtt-ca", str(ca), "--mqtt-insecure-hostname")
    )
    assert tls is not None and tls.tls is not None
    assert tls.tls.ca_file == ca and tls.tls.check_hostname is False


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--mqtt-username", "ops"], "need --mqtt-url"),
        (["--mqtt-url", f"mqtt://u:{SECRET}@h:1"], "--mqtt-url: 'mqtt://***@h:1'"),
        (["--mqtt-url", "mqtt://h:70000"], "--mqtt-url:"),
        (["--mqtt-url", "mqtt://h", "--mqtt-ca", "/no/such/ca.pem"], "--mqtt-ca: /no/such"),
        (["--mqtt-url", "mqtt://h", "--mqtt-insecure-hostname"], "--mqtt-url: a tls section"),
        (["--mqtt-url", "mqtt://h", "--mqtt-password-env", "X"], "--mqtt-username"),
        (["--mqtt-url", "mqtt://h", "--mqtt-username", "u", "--mqtt-password-env", "9"],
         "--mqtt-password-env:"),
    ],
)  # fmt: skip
def test_bad_options_name_the_option(argv: list[str], expected: str) -> None:
    with pytest.raises(BrokerArgumentError) as err:
        broker_from_args(_args(*argv))
    assert expected in str(err.value) and SECRET not in str(err.value)
    assert err.value.exit_code == 2 and err.value.fix
