"""Real Mosquitto brokers for tests, on free loopback ports, each with its own config in a tmp dir.

``Broker`` starts/stops/kills/restarts one ``mosquitto`` process on the *same* port (so clients
reconnect on their own), optionally with a TLS listener (``make_pki``), an ACL file and a
password file. Persistence is on (``autosave_interval 1``) so that a subscriber's persistent
session survives a SIGKILL of the broker. ``Collector`` is a test-side subscriber.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion


def mosquitto_binary() -> str | None:
    """Path of the mosquitto binary, or None where it is not installed."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- PKI


@dataclass(frozen=True)
class Pki:
    dir: Path
    ca: Path
    server_cert: Path
    server_key: Path

    def client(self, name: str) -> tuple[Path, Path]:
        return self.dir / f"{name}.pem", self.dir / f"{name}.key"


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    server: bool = False,
    san_ip: bool = True,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    elif server:
        names: list[x509.GeneralName] = [x509.DNSName("localhost")]
        if san_ip:
            names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
        builder = builder.add_extension(
            x509.SubjectAlternativeName(names),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(
    directory: Path, clients: list[str], *, ca_name: str = "Edge Test CA", san_ip: bool = True
) -> Pki:
    """A CA, a server certificate for localhost (+ 127.0.0.1 when ``san_ip``) and client certs
    with CN=name."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _cert(ca_name, ca_key, None, ca_key, ca=True)
    (directory / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    srv_key = ec.generate_private_key(ec.SECP256R1())
    srv = _cert("localhost", srv_key, ca_cert.subject, ca_key, server=True, san_ip=san_ip)
    (directory / "server.pem").write_bytes(srv.public_bytes(serialization.Encoding.PEM))
    (directory / "server.key").write_bytes(_key_pem(srv_key))
    for name in clients:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(name, key, ca_cert.subject, ca_key)
        (directory / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (directory / f"{name}.key").write_bytes(_key_pem(key))
    return Pki(directory, directory / "ca.pem", directory / "server.pem", directory / "server.key")


# --------------------------------------------------------------------------- broker


class Broker:
    """One mosquitto process on a fixed loopback port; restartable on the same port."""

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        pki: Pki | None = None,
        acl: str | None = None,
        passwords: dict[str, str] | None = None,
    ) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise RuntimeError("mosquitto is not installed")
        self.binary = binary
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.pki = pki
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.dir / "mosquitto.log"
        lines = [
            "per_listener_settings false",
            "user root" if os.geteuid() == 0 else "",
            f"listener {self.port} 127.0.0.1",
            "persistence true",
            f"persistence_location {self.dir}/",
            "autosave_interval 1",
            "max_queued_messages 1000000",
            "max_inflight_messages 0",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        if pki is not None:
            lines += [
                f"cafile {pki.ca}",
                f"certfile {pki.server_cert}",
                f"keyfile {pki.server_key}",
                "require_certificate true",
                "use_identity_as_username true",
                "tls_version tlsv1.2",
            ]
        if passwords:
            pw = self.dir / "passwd"
            pw.write_text("")
            for user, password in passwords.items():
                subprocess.run(
                    ["mosquitto_passwd", "-b", str(pw), user, password],
                    check=True,
                    capture_output=True,
                    timeout=10,
                )
            lines.append(f"password_file {pw}")
        if acl is not None:
            (self.dir / "acl").write_text(acl)
            lines.append(f"acl_file {self.dir / 'acl'}")
        lines.append(
            "allow_anonymous false" if (pki is not None or passwords) else "allow_anonymous true"
        )
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text("\n".join(x for x in lines if x) + "\n")

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.pki else 'mqtt'}://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 10.0) -> Broker:
        if self.proc is not None and self.proc.poll() is None:
            return self
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log_path.read_text()[-2000:]}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                return self
            time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port} in {timeout_s} s")

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM and wait."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout_s)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, no final persistence save."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- subscriber


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)


class Collector:
    """A subscriber that records every message; persistent session when ``client_id`` given."""

    def __init__(
        self,
        url: str,
        topics: list[str],
        *,
        client_id: str | None = None,
        tls: tuple[Path, Path, Path] | None = None,
        protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv311,
    ) -> None:
        host, port = url.split("://", 1)[1].rsplit(":", 1)
        self.messages: list[Message] = []
        self._cond = threading.Condition()
        self.subscribed = threading.Event()
        persistent = client_id is not None and protocol == MQTTProtocolVersion.MQTTv311
        self.client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id or "",
            clean_session=not persistent if protocol == MQTTProtocolVersion.MQTTv311 else None,
            protocol=protocol,
        )
        if tls is not None:
            ca, cert, key = tls
            self.client.tls_set(ca_certs=str(ca), certfile=str(cert), keyfile=str(key))
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        self.topics = topics

        def on_connect(c: paho.Client, u: Any, f: Any, rc: Any, p: Any) -> None:
            if not rc.is_failure:
                c.subscribe([(t, 1) for t in self.topics])

        def on_subscribe(c: paho.Client, u: Any, mid: int, rcs: Any, p: Any) -> None:
            self.subscribed.set()

        def on_message(c: paho.Client, u: Any, msg: paho.MQTTMessage) -> None:
            with self._cond:
                self.messages.append(Message(msg.topic, bytes(msg.payload), bool(msg.retain)))
                self._cond.notify_all()

        self.client.on_connect = on_connect
        self.client.on_subscribe = on_subscribe
        self.client.on_message = on_message
        self.client.connect(host, int(port), keepalive=10)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            raise RuntimeError("collector did not subscribe within 10 s")

    def wait_for(self, pred: Callable[[list[Message]], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not pred(self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
            return True

    def on(self, topic: str) -> list[Message]:
        with self._cond:
            return [m for m in self.messages if m.topic == topic]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Collector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
