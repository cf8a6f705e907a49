"""MQTT telemetry, events, commands and OTA messages (see ``docs/telemetry.md``).

Only :mod:`agent.comms.mqtt` imports paho and only :mod:`agent.comms.prometheus` imports
prometheus_client; importing this package imports neither.
"""
