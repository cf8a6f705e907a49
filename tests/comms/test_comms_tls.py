"""TLS against a real Mosquitto: client certificates, hostname checks, a per-device ACL,
wrong CAs and bad files refused with clear errors; password auth with redaction."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.comms.mqtt import publish_once
from agent.comms.service import CommsService
from agent.comms.tls import tls_context
from agent.config.broker import MqttConfig
from agent.core.errors import CommsError
from tests.helpers.broker import Broker, Collector, Pki, make_pki, mosquitto_binary

pytestmark = pytest.mark.skipif(
    mosquitto_binary() is None, reason="mosquitto binary not installed (scripts/test.sh adds it)"
)

FLEET = "fleet1"
ACL = """user fleet-ops
topic readwrite #

pattern readwrite edge/+/%u/#
pattern read edge/+/group/#
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"), ["dev1", "dev2", "fleet-ops"])


@pytest.fixture
def tls_broker(tmp_path: Path, pki: Pki) -> Iterator[Broker]:
    with Broker(tmp_path / "broker", pki=pki, acl=ACL) as b:
        yield b


def _cfg(url: str, pki: Pki, who: str, **kw: object) -> MqttConfig:
    cert, key = pki.client(who)
    doc: dict[str, object] = {
        "enabled": True,
        "url": url,
        "keepalive_s": 5,
        "reconnect_min_s": 0.2,
        "reconnect_max_s": 1.0,
        "tls": {"ca_file": str(pki.ca), "cert_file": str(cert), "key_file": str(key)},
    }
    doc.update(kw)
    return MqttConfig.model_validate(doc)


def _ops(broker: Broker, pki: Pki, topics: list[str]) -> Collector:
    cert, key = pki.client("fleet-ops")
    return Collector(broker.url, topics, tls=(pki.ca, cert, key))


@pytest.mark.timeout(60)
def test_device_over_tls_with_client_cert(tls_broker: Broker, pki: Pki, tmp_path: Path) -> None:
    with _ops(tls_broker, pki, ["edge/#"]) as ops:
        svc = CommsService(
            _cfg(tls_broker.url, pki, "dev1"), fleet=FLEET, device_id="dev1", state_dir=tmp_path
        )
        svc.start()
        try:
            assert svc.client is not None and svc.client.wait_connected(10)
            svc.publish_event("test.tls", {"ok": True})
            assert svc.wait_drained(10)
            assert ops.wait_for(lambda m: any(x.topic.endswith("/events") for x in m), 5)
            assert svc.status().rejected == 0
        finally:
            svc.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_acl_stops_a_device_writing_another_devices_topics(
    tls_broker: Broker, pki: Pki, protocol: str
) -> None:
    with _ops(tls_broker, pki, ["edge/#"]) as ops:
        cfg = _cfg(tls_broker.url, pki, "dev1", protocol=protocol)
        forbidden = f"edge/{FLEET}/dev2/events"
        if protocol == "5":
            # mosquitto answers an ACL-denied QoS 1 PUBLISH with PUBACK 0x87 (not authorized)
            with pytest.raises(CommsError, match=r"(?i)not authori[sz]ed"):
                publish_once(cfg, forbidden, b"forged", client_id="dev1-a")
        else:
            publish_once(cfg, forbidden, b"forged", client_id="dev1-b")  # 3.1.1: silent drop
        publish_once(cfg, f"edge/{FLEET}/dev1/events", b"mine", client_id="dev1-c")
        assert ops.wait_for(lambda m: any(x.payload == b"mine" for x in m), 5)
        time.sleep(0.3)
        assert not any(x.topic == forbidden for x in ops.messages)


@pytest.mark.timeout(60)
def test_wrong_ca_is_refused_with_a_clear_error(
    tls_broker: Broker, pki: Pki, tmp_path: Path
) -> None:
    other = make_pki(tmp_path / "other", ["dev1"], ca_name="Some Other CA")
    cert, key = pki.client("dev1")
    cfg = _cfg(tls_broker.url, pki, "dev1").model_copy(
        update={
            "tls": _cfg(tls_broker.url, pki, "dev1").tls.model_copy(  # type: ignore[union-attr]
                update={"ca_file": other.ca}
            )
        }
    )
    with pytest.raises(CommsError) as err:
        publish_once(cfg, f"edge/{FLEET}/dev1/events", b"x", timeout_s=5)
    assert "certificate" in str(err.value) and "ca_file" in str(err.value)
    svc = CommsService(cfg, fleet=FLEET, device_id="dev1", state_dir=tmp_path / "s")
    svc.start()  # does not raise or block: the agent keeps running offline
    try:
        deadline = time.monotonic() + 10
        # the error is recorded first, then its comms.error event is spooled: wait for both
        while time.monotonic() < deadline and not (
            svc.status().last_error and svc.status().spooled >= 1
        ):
            time.sleep(0.1)
        st = svc.status()
        assert not st.connected
        assert st.last_error is not None and "certificate" in st.last_error
        assert st.spooled >= 1  # a comms.error event waits in the spool for a good link
    finally:
        svc.close(timeout_s=1)
    assert cert.exists() and key.exists()


@pytest.mark.timeout(60)
def test_hostname_checking(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki", ["dev1"], san_ip=False)  # server cert names localhost only
    with Broker(tmp_path / "b", pki=pki, acl=ACL) as broker:
        by_ip = broker.url  # mqtts://127.0.0.1:port — not in the certificate
        with pytest.raises(CommsError, match="certificate"):
            publish_once(_cfg(by_ip, pki, "dev1"), f"edge/{FLEET}/dev1/x", b"1", timeout_s=5)
        by_name = by_ip.replace("127.0.0.1", "localhost")
        publish_once(_cfg(by_name, pki, "dev1"), f"edge/{FLEET}/dev1/x", b"1", timeout_s=5)
        unchecked = _cfg(by_ip, pki, "dev1")
        assert unchecked.tls is not None
        unchecked = unchecked.model_copy(
            update={"tls": unchecked.tls.model_copy(update={"check_hostname": False})}
        )
        publish_once(unchecked, f"edge/{FLEET}/dev1/x", b"1", timeout_s=5)


def test_missing_and_bad_tls_files_name_file_and_key(tmp_path: Path, pki: Pki) -> None:
    cfg = _cfg("mqtts://127.0.0.1:8883", pki, "dev1")
    assert cfg.tls is not None
    missing = cfg.model_copy(
        update={"tls": cfg.tls.model_copy(update={"ca_file": tmp_path / "nope.pem"})}
    )
    with pytest.raises(CommsError) as err:
        tls_context(missing)
    assert "mqtt.tls.ca_file" in str(err.value) and "nope.pem" in str(err.value)
    assert err.value.fix
    svc = CommsService(missing, fleet=FLEET, device_id="dev1", state_dir=tmp_path / "s")
    with pytest.raises(CommsError, match=r"mqtt\.tls\.ca_file"):
        svc.start()
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    bad = cfg.model_copy(update={"tls": cfg.tls.model_copy(update={"cert_file": garbage})})
    with pytest.raises(CommsError) as err2:
        tls_context(bad)
    assert "garbage.pem" in str(err2.value) and "cert_file" in str(err2.value)
    bad_ca = cfg.model_copy(update={"tls": cfg.tls.model_copy(update={"ca_file": garbage})})
    with pytest.raises(CommsError, match=r"mqtt\.tls\.ca_file"):
        tls_context(bad_ca)


def test_tls_section_needs_mqtts_url() -> None:
    with pytest.raises(ValueError, match=r"\[url\]"):
        MqttConfig.model_validate({"url": "mqtt://h:1883", "tls": {"check_hostname": True}})


@pytest.mark.timeout(60)
def test_password_auth_and_no_secret_in_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Broker(tmp_path / "b", passwords={"dev1": "s3cret-pw"}) as broker:
        good = MqttConfig(url=broker.url, username="dev1", password="s3cret-pw")
        bad = MqttConfig(url=broker.url, username="dev1", password="wrong-pw")
        with caplog.at_level(logging.DEBUG):
            publish_once(good, "edge/f/dev1/x", b"1", timeout_s=5)
            with pytest.raises(CommsError, match="refused the connection"):
                publish_once(bad, "edge/f/dev1/x", b"1", timeout_s=5)
            svc = CommsService(bad, fleet="f", device_id="dev1", state_dir=tmp_path / "s")
            svc.start()
            time.sleep(1.0)
            assert not svc.status().connected  # a failed CONNACK never counts as connected
            svc.close(timeout_s=1)
        assert "s3cret-pw" not in caplog.text and "wrong-pw" not in caplog.text
