"""What ``edge-agent run`` checks before it serves, and what ``edge-agent validate-config``
reports: the same call, so the two cannot drift.

The checks themselves are listed in :mod:`agent.config.checks`; the deep ones are done here by
the very functions ``run`` calls later (the build child reads the bundle with
:func:`~agent.engine.bundle.read_bundle_files`, the calibration step lists
:func:`~agent.engine.calibration.calibration_files`, OTA loads
:meth:`~agent.ota.trust.TrustStore.load`), so a file that passes here is not refused by them.
"""

from __future__ import annotations

from pathlib import Path

from agent.config import load
from agent.config.agent import AgentConfig
from agent.config.checks import RunOverrides
from agent.config.load import Kind
from agent.core.errors import CalibrationError, ConfigIssue
from agent.engine.bundle import bundle_labels, read_bundle_files
from agent.engine.calibration import ADD_FRAMES_FIX, CALIB_SUFFIXES, calibration_files
from agent.ota.trust import TrustStore

__all__ = ["PROBES", "RunOverrides", "RunProbes", "load_run_config", "validate_file"]


class RunProbes:
    """:class:`agent.config.checks.Probes` done with ``run``'s own readers."""

    def bundle(self, path: Path) -> None:
        bundle_labels(read_bundle_files(path))

    def calib_dir(self, path: Path) -> None:
        if not calibration_files(path):  # as the build's calibration step refuses it
            raise CalibrationError(
                f"no calibration frames (looked for {', '.join(CALIB_SUFFIXES)})",
                fix=ADD_FRAMES_FIX,
                path=path,
            )

    def trust_dir(self, path: Path) -> None:
        TrustStore.load(path)


PROBES = RunProbes()


def validate_file(
    path: Path, kind: Kind | None = None, overrides: RunOverrides | None = None
) -> tuple[Kind | None, list[ConfigIssue]]:
    """Every problem of one configuration file (``validate-config``): the schema's and each
    check ``run`` makes before serving."""
    return load.validate_file(path, kind, probes=PROBES, overrides=overrides)


def load_run_config(path: Path, overrides: RunOverrides | None = None) -> AgentConfig:
    """``agent.yaml`` for ``run``: a :class:`~agent.core.errors.ConfigError` listing every
    problem :func:`validate_file` reports, else the config with its paths resolved."""
    return load.load_run_config(path, probes=PROBES, overrides=overrides)
