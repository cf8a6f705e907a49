"""``edge-agent push`` logs in like a device: TLS with a client certificate, a username with a
password from a file or an environment variable — and a failure is one line with the fix,
never a traceback, never the password. Real Mosquitto brokers (``tests/helpers/broker.py``)."""

from __future__ import annotations

import json
from pathlib import Path

from agent.config.broker import MqttConfig, TlsConfig
from tests.fleet.test_push_reach import FakeDevice, push_args, push_cli
from tests.helpers.broker import Broker, free_port, make_pki

PASSWORD = "s3cret-Pa55-word"
DEVICE_PASSWORD = "dev-pw-0042"


def _clean_failure(res: object, code: int, *secrets: str) -> str:
    rc, out, err = res.returncode, res.stdout, res.stderr  # type: ignore[attr-defined]
    assert rc == code, (rc, err)
    assert "Traceback" not in err and out == ""
    for secret in secrets:
        assert secret not in out + err
    lines = [line for line in err.splitlines() if line.startswith("edge-agent: error:")]
    assert len(lines) == 1 and "fix:" in lines[0], err
    return lines[0]


def test_push_over_tls_with_a_client_certificate(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki", ["operator", "cam-a"])
    with Broker(tmp_path / "broker", pki=pki) as broker:
        cert, key = pki.client("cam-a")
        tls = TlsConfig(ca_file=pki.ca, cert_file=cert, key_file=key)
        dev = FakeDevice(MqttConfig(url=broker.url, tls=tls), "cam-a", answer="active").start()
        op_cert, op_key = pki.client("operator")
        base = push_args(tmp_path, 2, "--device", "cam-a")
        try:
            res = push_cli(
                *base, "--mqtt-url", broker.url, "--mqtt-ca", str(pki.ca),
                "--mqtt-cert", str(op_cert), "--mqtt-key", str(op_key), "--wait", "30",
            )  # fmt: skip
            no_cert = push_cli(*base, "--mqtt-url", broker.url, "--mqtt-ca", str(pki.ca))
        finally:
            dev.close()
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["reached"] == {"cam-a": {"state": "active", "version": 2}}
    _clean_failure(no_cert, 1)
    plain = push_cli(*base, "--mqtt-url", "mqtt://127.0.0.1:1883", "--mqtt-ca", str(pki.ca))
    assert "mqtts://" in _clean_failure(plain, 2)


def test_push_with_a_password_from_a_file_or_the_environment(tmp_path: Path) -> None:
    users = {"ops": PASSWORD, "cam-a": DEVICE_PASSWORD}
    with Broker(tmp_path / "broker", passwords=users) as broker:
        cfg = MqttConfig(url=broker.url, username="cam-a", password=DEVICE_PASSWORD)
        dev = FakeDevice(cfg, "cam-a", answer="active").start()
        secret = tmp_path / "ops.pw"
        secret.write_text(PASSWORD + "\n")
        login = ["--mqtt-url", broker.url, "--mqtt-username", "ops", "--wait", "30"]
        try:
            from_file = push_cli(
                *push_args(tmp_path, 2, "--device", "cam-a"), *login,
                "--mqtt-password-file", str(secret),
            )  # fmt: skip
            from_env = push_cli(
                *push_args(tmp_path, 3, "--device", "cam-a"), *login,
                "--mqtt-password-env", "PUSH_TEST_PW", env={"PUSH_TEST_PW": PASSWORD},
            )  # fmt: skip
            wrong = push_cli(
                *push_args(tmp_path, 4, "--device", "cam-a"), *login,
                "--mqtt-password-env", "PUSH_TEST_PW", env={"PUSH_TEST_PW": "not-" + PASSWORD},
            )  # fmt: skip
        finally:
            dev.close()
    for res, version in ((from_file, 2), (from_env, 3)):
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["reached"]["cam-a"] == {"state": "active", "version": version}
        assert PASSWORD not in res.stdout + res.stderr
    assert "refused" in _clean_failure(wrong, 1, PASSWORD)
    assert dev.seen and len(dev.seen) == 2, "the refused push published nothing"


def test_bad_broker_options_are_one_line_usage_errors(tmp_path: Path) -> None:
    base = push_args(tmp_path, 2, "--device", "cam-a")
    in_url = push_cli(*base, "--mqtt-url", f"mqtt://ops:{PASSWORD}@127.0.0.1:1883")
    assert "--mqtt-password-file" in _clean_failure(in_url, 2, PASSWORD)
    unset = push_cli(
        *base, "--mqtt-url", "mqtt://127.0.0.1:1883", "--mqtt-username", "ops",
        "--mqtt-password-env", "PUSH_TEST_UNSET_PW",
    )  # fmt: skip
    assert "PUSH_TEST_UNSET_PW is not set" in _clean_failure(unset, 2)
    missing = push_cli(
        *base, "--mqtt-url", "mqtt://127.0.0.1:1883", "--mqtt-username", "ops",
        "--mqtt-password-file", str(tmp_path / "nope.pw"),
    )  # fmt: skip
    assert "nope.pw" in _clean_failure(missing, 2)
    no_user = push_cli(*base, "--mqtt-url", "mqtt://127.0.0.1:1", "--mqtt-password-env", "HOME")
    assert "--mqtt-username" in _clean_failure(no_user, 2)
    for clear in (["--mqtt-password", PASSWORD], [f"--mqtt-password={PASSWORD}"]):
        res = push_cli(*base, "--mqtt-url", "mqtt://127.0.0.1:1", *clear)
        assert res.returncode == 2 and "--mqtt-password-file" in res.stderr
        assert PASSWORD not in res.stderr + res.stdout
    down = push_cli(*base, f"--mqtt-url=mqtt://127.0.0.1:{free_port()}")
    assert "cannot reach the broker" in _clean_failure(down, 1)
