"""Building a paho client from the config: protocol version, credentials, TLS context."""

from __future__ import annotations

import ssl

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent.config.broker import MqttConfig

UNSUPPORTED_PROTOCOL = 132  # CONNACK "Unsupported protocol version" (paho maps v3 rc=1 to it)


def protocol_of(cfg: MqttConfig) -> MQTTProtocolVersion:
    return MQTTProtocolVersion.MQTTv311 if cfg.protocol == "3.1.1" else MQTTProtocolVersion.MQTTv5


def new_paho(
    cfg: MqttConfig, client_id: str, protocol: MQTTProtocolVersion, ctx: ssl.SSLContext | None
) -> paho.Client:
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=protocol,
        clean_session=True if protocol != MQTTProtocolVersion.MQTTv5 else None,
    )
    if cfg.username is not None:
        client.username_pw_set(cfg.username, cfg.secret_password())
    if ctx is not None:
        client.tls_set_context(ctx)
        if not ctx.check_hostname:
            client.tls_insecure_set(True)
    return client


def release(client: paho.Client) -> None:
    """Close a stopped client's socket and wake-up pair now.

    paho closes them only when the client object is collected, and a client held in a reference
    cycle (its callbacks are bound methods of the object that holds it) waits for a full garbage
    collection. A process that opens and closes hundreds of sessions (the simulated fleet, the
    test suite) would hold the closed sessions' descriptors meanwhile, and paho's ``select()``
    cannot watch a descriptor numbered 1024 or more: new sessions would then never connect.
    Call after ``loop_stop()``; the client is not used again.
    """
    client.on_connect = None
    client.on_disconnect = None
    client.on_message = None
    client.on_publish = None
    client.on_subscribe = None
    # paho 1.6 and 2.x: the one place that closes the socket and the pair (its __del__ calls it)
    client._reset_sockets()  # pyright: ignore[reportPrivateUsage]
