"""Compose YAML within bounds: file size, nesting depth and nodes after alias expansion.

PyYAML has no limits of its own (SnakeYAML's ``maxAliasesForCollections`` / ``nestingDepthLimit``
have no PyYAML counterpart, nor does ruamel.yaml offer one). Its Composer recurses once per nesting
level, and its constructor shares aliased nodes, which is harmless until someone walks the data:
the line map and pydantic expand every alias, so a 700-byte "billion laughs" file becomes 10⁹ nodes.

:class:`BoundedLoader` overrides ``Composer.compose_node``, the one place where aliases are resolved
and nesting recurses. Before recursing it checks the depth; it records the expanded size of every
composed node (an alias costs the size of what it points at, so a DAG of aliases is counted as the
tree it expands to); it refuses an alias to a node still being composed (a cycle, ``&a [*a]``); and
it stops at the first node that takes the document past ``max_nodes``. Each refusal is a
:class:`YamlLimitError` at the line of the offending node, raised in milliseconds.

Scalar constructors that let a ``ValueError`` out (``2001-02-30``, an int of 5,000 digits,
``!!timestamp junk``) are turned into a ``ConstructorError`` at the value's line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.events import AliasEvent


@dataclass(frozen=True)
class YamlLimits:
    """Bounds on one configuration file (real files are a few KiB, ≤ 200 nodes, depth ≤ 5)."""

    max_bytes: int = 256 * 1024
    max_depth: int = 32
    max_nodes: int = 100_000


DEFAULT_LIMITS = YamlLimits()

#: what a scalar constructor may raise on hostile input besides a YAMLError
_VALUE_ERRORS = (ValueError, TypeError, AttributeError, ArithmeticError, LookupError)


class YamlLimitError(yaml.MarkedYAMLError):
    """A document goes past a :class:`YamlLimits` bound; ``fix`` says what to change."""

    def __init__(self, problem: str, mark: Any, fix: str) -> None:
        super().__init__(problem=problem, problem_mark=mark)
        self.fix = fix


class BoundedLoader(yaml.SafeLoader):
    """A ``SafeLoader`` whose composer bounds depth and expanded size and refuses cycles."""

    def __init__(self, stream: str, limits: YamlLimits = DEFAULT_LIMITS) -> None:
        super().__init__(stream)
        self.limits = limits
        self._depth = 0
        self._total = 0
        self._sizes: dict[yaml.Node, int] = {}

    def _too_deep(self, mark: Any) -> YamlLimitError:
        return YamlLimitError(
            f"nesting deeper than {self.limits.max_depth} levels",
            mark,
            "flatten the structure; configuration files nest a few levels at most",
        )

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:  # noqa: N803 - PyYAML's name
        # bounded in the scanner too: its simple-key lookahead is quadratic in open brackets
        if self.flow_level >= self.limits.max_depth:
            raise self._too_deep(self.get_mark())
        super().fetch_flow_collection_start(TokenClass)  # type: ignore[misc]

    def _count(self, size: int, mark: Any) -> None:
        self._total += size
        if self._total > self.limits.max_nodes:
            raise YamlLimitError(
                f"the document expands to more than {self.limits.max_nodes} nodes here "
                "(aliases count as copies of what they point at: a YAML bomb?)",
                mark,
                "write the values out or use far fewer aliases; a configuration file needs "
                "a few hundred nodes",
            )

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:  # type: ignore[override]
        mark = self.peek_event().start_mark
        if self.check_event(AliasEvent):
            anchor = self.peek_event().anchor
            node: yaml.Node = super().compose_node(parent, index)  # type: ignore[misc]
            size = self._sizes.get(node)
            if size is None:
                raise YamlLimitError(
                    f"alias *{anchor} points at a node that contains it (a cycle)",
                    mark,
                    f"point *{anchor} at a value defined before it, outside the value itself",
                )
            self._count(size, mark)
            return node
        if self._depth >= self.limits.max_depth:
            raise self._too_deep(mark)
        before = self._total
        self._depth += 1
        try:
            node = super().compose_node(parent, index)  # type: ignore[misc]
        finally:
            self._depth -= 1
        self._count(1, mark)
        self._sizes[node] = self._total - before
        return node

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)  # type: ignore[misc]
        except _VALUE_ERRORS as exc:
            raise ConstructorError(
                None,
                None,
                f"cannot read this {node.tag.rsplit(':', 1)[-1]} value ({str(exc)[:120]})",
                node.start_mark,
            ) from exc


def compose_bounded(text: str, limits: YamlLimits = DEFAULT_LIMITS) -> yaml.Node | None:
    """The root node of the single document in ``text`` (None when empty), within ``limits``.

    Raises ``yaml.YAMLError``: :class:`YamlLimitError` past a bound, a ``MarkedYAMLError`` for
    bad syntax.
    """
    if len(text) > limits.max_bytes:
        raise YamlLimitError(
            f"the document is larger than {limits.max_bytes} bytes",
            None,
            "configuration files are a few KiB; check that this is the right file",
        )
    loader = BoundedLoader(text, limits)
    try:
        return loader.get_single_node()
    finally:
        loader.dispose()


def construct_bounded(root: yaml.Node) -> Any:
    """Python data of a node from :func:`compose_bounded` (aliases stay shared, not copied)."""
    loader = BoundedLoader("")
    try:
        return loader.construct_document(root)
    finally:
        loader.dispose()
