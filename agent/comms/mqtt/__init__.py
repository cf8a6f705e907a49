"""The MQTT transport: the only package that imports paho (paho-mqtt >= 2, callback API v2).

:class:`MqttClient` wraps one paho client running its own network thread (``connect_async`` +
``loop_start``). Its callbacks only check reason codes and hand events to the owner's
callbacks, which must themselves only enqueue. A session counts as connected only after a
successful CONNACK; subscriptions are (re)made in ``on_connect``. Reconnects back off with full
jitter (:mod:`agent.comms.backoff`): paho's own doubling has none, so before every wait (paho
calls ``on_disconnect`` or ``on_connect_fail`` first) the drawn delay is set as both its minimum
and maximum. ``protocol: auto`` tries MQTT 5 and rebuilds the client for 3.1.1 when the broker
refuses version 5. ``publish(expiry_s=...)`` sets the MQTT 5 message expiry interval.

:func:`publish_once` is a blocking one-shot publish for the fleet-side ``edge-agent push``.
Modules: ``client`` (:class:`MqttClient`), ``oneshot`` (:func:`publish_once`), ``factory`` (a paho
client from the config). URL parsing, TLS and failure diagnosis live beside this package
(endpoint, tls, diagnose).
"""

from agent.comms.mqtt.client import MqttClient
from agent.comms.mqtt.oneshot import publish_once

__all__ = ["MqttClient", "publish_once"]
