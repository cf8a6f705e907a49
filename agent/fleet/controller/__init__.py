"""The fleet controller (``edge-agent fleet serve``): the I/O shell around the registry and the
pure rollout engine.

* :mod:`.service` — :class:`FleetController`: composes everything below, backs the API;
* :mod:`.intake` — device messages from the MQTT thread into the registry (bounded queue);
* :mod:`.driver` — lease, tick inside the store's atomic update, then the actions;
* :mod:`.executor` — rollout actions → MQTT (retained manifests, clears, rollback commands);
* :mod:`.files` — the rollout bundle download server (``/r/<id>/<path>``);
* :mod:`.api` — the HTTP JSON API (its module docstring is the contract); :mod:`.auth` — token;
* :mod:`.views` — API answers built from records, the start request.
"""

from agent.fleet.controller.api import ApiError, ApiServer
from agent.fleet.controller.service import FleetController, default_instance_id

__all__ = ["ApiError", "ApiServer", "FleetController", "default_instance_id"]
