"""``auto`` always serves: a candidate precision that cannot be built or validated is reported
and skipped, the others serve with the reason; an explicitly requested precision still fails
with its error, and when every candidate fails the error names each reason."""

from __future__ import annotations

import logging

from agent.core.errors import BuildFailed, EdgeAgentError, ValidationFailed
from agent.engine.build.candidates import Candidate
from agent.engine.build.context import BuildContext, BuildInputs
from agent.engine.build.publish import Verdict, validate_step
from agent.engine.build.steps import build_candidate

__all__ = ["annotate_verdict", "build_or_skip", "live_candidates", "validate_or_skip"]

log = logging.getLogger(__name__)


def _reason(exc: EdgeAgentError) -> str:
    kind = type(exc).__name__
    return f"{kind}: {exc.message}" + (f" (fix: {exc.fix})" if exc.fix else "")


def _skip(ctx: BuildContext, cand: Candidate, stage: str, exc: EdgeAgentError) -> None:
    cand.failure = f"{stage} failed: {_reason(exc)}"
    cand.staged, cand.result = None, None
    note = f"{cand.precision} skipped ({cand.failure})"
    log.warning("candidate skipped", extra={"precision": cand.precision, "reason": cand.failure})
    ctx.notes.append(note)
    ctx.progress(stage, 1.0, note)


def live_candidates(candidates: list[Candidate]) -> list[Candidate]:
    """The candidates that did not fail."""
    return [c for c in candidates if c.failure is None]


def _all_failed(candidates: list[Candidate], errors: dict[str, EdgeAgentError]) -> Exception:
    """The error when no candidate is left: the one error itself, or every reason named."""
    if len(errors) == 1 and len(candidates) == 1:
        return next(iter(errors.values()))
    reasons = "; ".join(f"{c.precision}: {c.failure}" for c in candidates if c.failure)
    first = next(iter(errors.values()), None)
    return BuildFailed(
        f"no precision could be built ({reasons})",
        fix=(first.fix if first is not None else None)
        or "fix the first error above, or build one precision with --precision",
        out_of_memory=any(isinstance(e, BuildFailed) and e.out_of_memory for e in errors.values()),
    )


def build_or_skip(ctx: BuildContext, inputs: BuildInputs, candidates: list[Candidate]) -> None:
    """Build every candidate not in the cache. Under ``auto`` a candidate whose build fails
    (any :class:`EdgeAgentError`: out of memory, calibration, a crashed child) is skipped with
    its reason in the notes; otherwise the error propagates. Raises when none is left."""
    errors: dict[str, EdgeAgentError] = {}
    for cand in candidates:
        if cand.artifact is not None:
            continue
        try:
            build_candidate(ctx, inputs, cand)
        except EdgeAgentError as exc:
            if ctx.options.precision != "auto":
                raise
            errors[cand.precision] = exc
            _skip(ctx, cand, "build", exc)
    if not live_candidates(candidates):
        raise _all_failed(candidates, errors)


def validate_or_skip(
    ctx: BuildContext, inputs: BuildInputs, candidates: list[Candidate]
) -> Verdict:
    """The gate on every live candidate. Under ``auto``, when the gate itself breaks (a
    runner that cannot load the fresh INT8 engine, say), INT8 is skipped and the gate runs
    again on the others."""
    live = live_candidates(candidates)
    try:
        return validate_step(ctx, inputs, live)
    except EdgeAgentError as exc:
        int8 = next((c for c in live if c.precision == "int8" and c.fresh), None)
        if ctx.options.precision != "auto" or int8 is None or len(live) < 2:
            raise
        _skip(ctx, int8, "validate", exc)
    return validate_step(ctx, inputs, live_candidates(candidates))


def annotate_verdict(verdict: Verdict, candidates: list[Candidate]) -> None:
    """Name the skipped candidates and their reasons in the gate report's ``why`` (and in the
    failure, when no precision passed)."""
    skipped = [c for c in candidates if c.failure]
    if not skipped:
        return
    text = "; ".join(f"{c.precision} skipped: {c.failure}" for c in skipped)
    report = verdict.report
    report.why = f"{report.why}; {text}" if report.why else text
    if verdict.failure is not None:
        verdict.failure = ValidationFailed(
            f"{verdict.failure.message}; {text}", fix=verdict.failure.fix
        )
