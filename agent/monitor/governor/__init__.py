"""The governor: monitor samples → a decision (pool size, fps cap, builds, shedding).

``states`` (the two tracks and their declared transition tables), ``limits`` (thresholds and
the fps ladder), ``actions`` (what it decided: actions, decisions, events), ``reading`` (a sample
as the governor sees it), ``decide`` (the pure decision core) and ``machine`` (:class:`Governor`,
the thin stateful shell).
"""
