"""Gate-driven accuracy recovery for INT8.

When the INT8 candidate fails the validation gate, the search re-quantizes it, each attempt
built and gated like the candidate itself (:func:`~agent.engine.build.publish.run_gate`):

1. with the profile's calibration method, keep in float the 1, 2, 4, 8 … most sensitive
   layers (the quantizer's per-layer ranking: the error each node adds), each with the
   quantized consumers of its output (they would quantize it again), until the gate passes;
2. then the same with each other calibration method (entropy / percentile / minmax), never
   with more float layers than the best passing attempt so far;
3. the passing attempt with the fewest float layers wins (the fastest on a tie).

A method stops growing once an attempt is no faster than float (more float layers only make
it slower) or fails to build; the whole search is bounded by :class:`SearchLimits` (attempts
and seconds). Every attempt is recorded in the INT8 manifest's ``quantization.search``.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Sequence
from typing import Any

from agent.core.errors import BuildFailed, EdgeAgentError
from agent.engine.build.attempt import Attempt, attempt_context, search_reasons
from agent.engine.build.candidates import Candidate
from agent.engine.build.context import BuildContext, BuildInputs
from agent.engine.build.fallback import annotate_verdict, live_candidates, validate_or_skip
from agent.engine.build.floats import GraphFacts, graph_facts, sensitivity_ranking
from agent.engine.build.publish import Verdict, run_gate
from agent.engine.build.steps import build_candidate
from agent.engine.validate.results import PrecisionResult

__all__ = ["gate_and_recover", "recover_accuracy"]

log = logging.getLogger(__name__)


class _Search:
    """One search: its attempts (the first is the candidate as built) and its budget."""

    def __init__(
        self, ctx: BuildContext, inputs: BuildInputs, cand: Candidate, facts: GraphFacts
    ) -> None:
        self.ctx, self.inputs, self.cand, self.facts = ctx, inputs, cand, facts
        self.limits = ctx.options.search
        self.deadline = time.monotonic() + self.limits.max_seconds
        self.attempts: list[Attempt] = []
        self.stopped = "every method and layer count worth trying was tried"
        self.halted = False

    def best(self) -> Attempt | None:
        passing = [a for a in self.attempts if a.passed]
        return min(passing, key=lambda a: (a.float_count, a.p50_ms or float("inf")), default=None)

    def _budget_left(self) -> bool:
        done = len(self.attempts) - 1
        if done >= self.limits.max_attempts:
            self.stopped = f"attempt limit reached ({self.limits.max_attempts} re-quantizations)"
            self.halted = True
        elif time.monotonic() > self.deadline:
            self.stopped = f"time limit reached ({self.limits.max_seconds:g} s)"
            self.halted = True
        return not self.halted

    def attempt(
        self, method: str, ranking: Sequence[dict[str, Any]], rank: int, base: Attempt | None
    ) -> Attempt | None:
        """Quantize, build and gate one attempt (``rank`` layers of ``ranking``, measured on
        ``base``, kept in float); None when the budget is spent."""
        if self.halted or not self._budget_left():
            return None
        known = base.cand.quantization if base is not None else None
        reasons = search_reasons(ranking[:rank], self.facts.consumers, known)
        index = len(self.attempts)
        self.ctx.progress("search", 0.0, f"attempt {index}: {method}, {rank} layer(s) in float")
        started = time.monotonic()
        sub = Candidate("int8", self.cand.key)
        actx = attempt_context(self.ctx, method, list(reasons))
        try:
            build_candidate(
                actx, self.inputs, sub, stage=f"stage-int8-{index}", search_reasons=reasons
            )
            with self.ctx.watch.stage("validate"):
                results, _ = run_gate(self.ctx, self.inputs, [sub])
            attempt = Attempt(index, method, rank, sub, results["int8"], None)
        except EdgeAgentError as exc:
            attempt = Attempt(index, method, rank, sub, None, exc.message)
            if isinstance(exc, BuildFailed) and exc.out_of_memory:
                self.stopped, self.halted = f"attempt {index} ran out of memory", True
        finally:
            self.ctx.record_rss(actx.peak_rss)
        attempt.seconds = time.monotonic() - started
        self.attempts.append(attempt)
        self.ctx.progress("search", 1.0, attempt.describe())
        return attempt

    def grow(self, method: str, base: Attempt, float_p50: float | None) -> None:
        """Keep more of ``base``'s most sensitive layers in float until the gate passes."""
        quantization = base.cand.quantization
        report = quantization.report if quantization is not None else {}
        already = set(quantization.excluded_nodes if quantization is not None else ())
        ranking = [r for r in sensitivity_ranking(report) if r["node"] not in already]
        ranking = [r for r in ranking if float(r.get("added_error") or 0.0) > 0.0]
        tried = 0
        for size in self.limits.sizes:
            rank = min(size, len(ranking))
            best = self.best()
            if rank <= tried or (best is not None and rank > best.rank):
                break
            tried = rank
            attempt = self.attempt(method, ranking, rank, base)
            if attempt is not None and attempt.passed:
                self.stopped = f"attempt {attempt.index} passes the gate"
            if attempt is None or attempt.passed or attempt.error is not None:
                break
            if _not_faster(attempt, float_p50):
                break

    def run(self, first: Attempt, float_p50: float | None) -> None:
        """``first`` (the candidate as built, the profile's method), then the other methods."""
        self.attempts.append(first)
        if not _not_faster(first, float_p50):
            self.grow(first.method, first, float_p50)
        for method in (m for m in self.limits.methods if m != first.method):
            best = self.best()
            if best is not None and best.rank == 0:
                self.stopped = f"attempt {best.index} passes with no layer added in float"
                break
            base = self.attempt(method, [], 0, None)
            if base is None:
                break
            if not (base.passed or base.error is not None or _not_faster(base, float_p50)):
                self.grow(method, base, float_p50)


def _not_faster(attempt: Attempt, float_p50: float | None) -> bool:
    p50 = attempt.p50_ms
    return p50 is not None and float_p50 is not None and p50 >= float_p50


def _record(search: _Search, chosen: Attempt, started: float) -> dict[str, Any]:
    return {
        "ran": True,
        "attempts": [a.to_json() for a in search.attempts],
        "chosen": chosen.index,
        "passed": chosen.passed,
        "stopped": search.stopped,
        "seconds": round(time.monotonic() - started, 2),
        "limits": search.limits.to_json(),
    }


def _adopt(cand: Candidate, chosen: Attempt, record: dict[str, Any]) -> None:
    """Make ``cand`` the chosen attempt, with the search's record in its quantization."""
    if chosen.cand is not cand:
        if cand.staged is not None:
            shutil.rmtree(cand.staged, ignore_errors=True)
        cand.staged, cand.result = chosen.cand.staged, chosen.cand.result
        cand.build = chosen.cand.build
        cand.quantization = chosen.cand.quantization
    if cand.quantization is not None:
        cand.quantization = dataclasses.replace(cand.quantization, search=record)


def recover_accuracy(
    ctx: BuildContext,
    inputs: BuildInputs,
    cand: Candidate,
    first: PrecisionResult,
    float_p50: float | None,
) -> bool:
    """Search for an INT8 ``cand`` that passes the gate (``first`` is its gate result,
    ``float_p50`` the fastest float latency measured beside it). Returns True when ``cand``
    was replaced by another attempt (the caller validates it again)."""
    started = time.monotonic()
    assert cand.quantization is not None
    base = Attempt(0, ctx.build_cfg.calibration.method, 0, cand, first, None)
    if ctx.options.precision == "auto" and _not_faster(base, float_p50):
        # more float layers only make it slower: no attempt could ever serve
        note = (
            f"accuracy search skipped: int8 (p50 {first.p50_ms:.3f} ms) is not faster than "
            f"float (p50 {float_p50:.3f} ms) with no more layers in float"
        )
        ctx.notes.append(note)
        _mark_not_needed(cand, note)
        return False
    facts = graph_facts(inputs.prepared.path, cand.quantization.recipe)
    search = _Search(ctx, inputs, cand, facts)
    ctx.progress("search", 0.0, f"int8 fails the gate ({first.describe()}): searching")
    search.run(base, float_p50)
    best = search.best()
    chosen = best if best is not None else search.attempts[0]
    note = (
        f"accuracy search: attempt {chosen.index} passes ({chosen.describe()})"
        if best is not None
        else f"accuracy search: no attempt passed the gate in {len(search.attempts)} "
        f"attempt(s); {search.stopped}"
    )
    ctx.notes.append(note)
    log.info("accuracy search", extra={"attempts": len(search.attempts), "chosen": chosen.index})
    _adopt(cand, chosen, _record(search, chosen, started))
    for attempt in search.attempts:
        if attempt is not chosen and attempt.cand is not cand and attempt.cand.staged:
            shutil.rmtree(attempt.cand.staged, ignore_errors=True)
    return chosen.index != 0


def _float_p50(verdict: Verdict) -> float | None:
    floats = [
        r.p50_ms
        for p, r in verdict.report.results.items()
        if p != "int8" and r.passed and r.p50_ms is not None
    ]
    return min(floats, default=None)


def _mark_not_needed(cand: Candidate, why: str) -> None:
    if cand.quantization is not None and cand.quantization.search is None:
        record = {"ran": False, "why": why}
        cand.quantization = dataclasses.replace(cand.quantization, search=record)


def gate_and_recover(
    ctx: BuildContext, inputs: BuildInputs, candidates: list[Candidate]
) -> Verdict:
    """The gate on every live candidate; when a fresh INT8 fails it, the accuracy search,
    then the gate again on the recovered INT8 beside the others (interleaved latency)."""
    verdict = validate_or_skip(ctx, inputs, candidates)
    live = live_candidates(candidates)
    int8 = next((c for c in live if c.precision == "int8" and c.fresh), None)
    result = verdict.report.results.get("int8")
    if int8 is not None and result is not None:
        if result.passed:
            _mark_not_needed(int8, "int8 passed the gate on the first attempt")
        elif not ctx.options.search.enabled:
            _mark_not_needed(int8, "the accuracy search is disabled")
        elif recover_accuracy(ctx, inputs, int8, result, _float_p50(verdict)):
            verdict = validate_or_skip(ctx, inputs, candidates)
    annotate_verdict(verdict, candidates)
    return verdict
