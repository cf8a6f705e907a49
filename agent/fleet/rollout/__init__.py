"""Rollouts: one model version to a fleet in waves, with abort criteria (pure logic, no I/O).

:mod:`.spec` (the request) → :mod:`.plan` (targets, waves) → :mod:`.sign` (bundle copy and one
signed manifest per device) → :mod:`.engine` (``tick`` / ``control`` over a :class:`Rollout`,
returning :mod:`.actions` for the controller's I/O shell). :mod:`.criteria` decides aborts,
:mod:`.progress` / :mod:`.observe` read the registry, :mod:`.records` is the stored document.
"""

from agent.fleet.rollout.actions import Action, ClearManifest, PublishManifest, SendRollback
from agent.fleet.rollout.criteria import Abort, evaluate
from agent.fleet.rollout.engine import OPERATOR_ABORT, ControlOp, TickResult, control, tick
from agent.fleet.rollout.plan import plan_waves, select_targets
from agent.fleet.rollout.records import DeviceProgress, Rollout, Wave
from agent.fleet.rollout.sign import BUNDLE_DIR, PreparedRollout, new_rollout_id, prepare_rollout
from agent.fleet.rollout.spec import RolloutSpec, RolloutTarget, parse_spec, parse_target
from agent.fleet.rollout.states import DeviceState, RolloutState, check_transition

__all__ = [
    "BUNDLE_DIR",
    "OPERATOR_ABORT",
    "Abort",
    "Action",
    "ClearManifest",
    "ControlOp",
    "DeviceProgress",
    "DeviceState",
    "PreparedRollout",
    "PublishManifest",
    "Rollout",
    "RolloutSpec",
    "RolloutState",
    "RolloutTarget",
    "SendRollback",
    "TickResult",
    "Wave",
    "check_transition",
    "control",
    "evaluate",
    "new_rollout_id",
    "parse_spec",
    "parse_target",
    "plan_waves",
    "prepare_rollout",
    "select_targets",
    "tick",
]
