"""``--help`` that shows each option's default, for every command and subcommand.

:class:`Parser` is the parser class of every subcommand (``add_subparsers(parser_class=Parser)``
in :mod:`agent.cli.main`; nested subcommands inherit it). Its formatter appends
``(default: X)`` like argparse's ``ArgumentDefaultsHelpFormatter``, except where the default says
nothing (None, False, an empty list) or the help text already names it.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["DefaultsFormatter", "Parser"]


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``ArgumentDefaultsHelpFormatter`` without ``(default: None)`` noise."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default is None
            or default is False
            or default == []
            or default is argparse.SUPPRESS
            or not action.option_strings
        ):
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose help shows defaults (:class:`DefaultsFormatter`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("formatter_class") in (None, argparse.HelpFormatter):
            kwargs["formatter_class"] = DefaultsFormatter
        super().__init__(*args, **kwargs)
