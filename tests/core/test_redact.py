"""agent.core.redact: credentials out of text and secret keys out of config documents."""

from __future__ import annotations

import pytest

from agent.core.redact import MASK, is_secret_key, redact_config, redact_text


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("rtsp://user:pw@10.0.0.2:554/s", "rtsp://***@10.0.0.2:554/s"),
        ("http://user:secret@127.0.0.1:8080/", "http://***@127.0.0.1:8080/"),
        ("mqtt://user:pw@host:1883", "mqtt://***@host:1883"),
        ("mqtts://broker.example:8883", "mqtts://broker.example:8883"),
        ("rtsp://admin@cam/s", "rtsp://***@cam/s"),
        ("rtsp://u:p@ss@cam/s", "rtsp://***@cam/s"),
        ("rtsp://cam/s", "rtsp://cam/s"),
        ("/dev/video0", "/dev/video0"),
        (
            "rtspsrc location=rtsp://u:p@h/s user-id=bob user-pw=hunter2 ! fakesink",
            "rtspsrc location=rtsp://***@h/s user-id=*** user-pw=*** ! fakesink",
        ),
        ('rtspsrc user-pw="a b" ! x', "rtspsrc user-pw=*** ! x"),
        ("rtspsrc user-pw='a b' ! x", "rtspsrc user-pw=*** ! x"),
        ("rtsp://cam/s?user=admin&password=123", "rtsp://cam/s?user=***&password=***"),
        ("http://h/x?TOKEN=abc#frag", "http://h/x?TOKEN=***#frag"),
        ("cannot connect to http://a:b@h/", "cannot connect to http://***@h/"),
        ("", ""),
    ],
)
def test_redact_text(raw: str, clean: str) -> None:
    assert redact_text(raw) == clean


def test_redact_text_is_idempotent() -> None:
    once = redact_text("rtsp://u:p@h/s?password=x user-pw=y")
    assert redact_text(once) == once


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("password", True),
        ("MQTT_Password", True),
        ("api_token", True),
        ("client_secret", True),
        ("passphrase", True),
        ("private_key", True),
        ("key_file", False),
        ("username", False),
        (3, False),
    ],
)
def test_is_secret_key(key: object, secret: bool) -> None:
    assert is_secret_key(key) is secret


def test_redact_config_masks_nested_secrets_and_copies() -> None:
    doc = {
        "device_id": "cam-07",
        "mqtt": {"url": "mqtt://h:1883", "username": "u", "password": "pw", "tls": None},
        "hooks": [{"token": "t"}, {"name": "x"}, "plain"],
        "empty": {"secret": None},
        "blank": {"password": ""},
    }
    out = redact_config(doc)
    assert out == {
        "device_id": "cam-07",
        "mqtt": {"url": "mqtt://h:1883", "username": "u", "password": MASK, "tls": None},
        "hooks": [{"token": MASK}, {"name": "x"}, "plain"],
        "empty": {"secret": None},
        "blank": {"password": MASK},
    }
    assert doc["mqtt"]["password"] == "pw"  # the input is not changed


def test_redact_config_passes_scalars_through() -> None:
    assert redact_config(5) == 5
    assert redact_config("password") == "password"
    assert redact_config(None) is None
