"""Log format choice (journal, terminal, pipe, override), the text format, the stats logger's
level on a terminal. Terminals are real pseudo-terminals; pipes and the journal's stream are
real descriptors (``JOURNAL_STREAM`` names a stream by its device and inode, systemd.exec(5))."""

from __future__ import annotations

import io
import json
import logging
import os
import pty
from collections.abc import Iterator
from typing import IO

import pytest

from agent.core.errors import ModelError
from agent.core.logs import (
    STATS_LOGGER,
    JsonFormatter,
    choose_format,
    configure_logging,
    console_format,
    log_fields,
    wants_color,
)
from agent.core.logtext import TextFormatter


@pytest.fixture
def terminal() -> Iterator[IO[str]]:
    """The slave side of a fresh pty, as a text stream."""
    master, slave = pty.openpty()
    stream = os.fdopen(slave, "w", encoding="utf-8")
    yield stream
    stream.close()
    os.close(master)


@pytest.fixture
def pipe() -> Iterator[IO[str]]:
    read, write = os.pipe()
    stream = os.fdopen(write, "w", encoding="utf-8")
    yield stream
    stream.close()
    os.close(read)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    configure_logging("warning", io.StringIO(), fmt="auto")
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger(STATS_LOGGER).setLevel(logging.NOTSET)


def _journal(stream: IO[str]) -> str:
    st = os.fstat(stream.fileno())
    return f"{st.st_dev}:{st.st_ino}"


def test_the_format_follows_the_stream(terminal: IO[str], pipe: IO[str]) -> None:
    assert choose_format("auto", terminal, {}) == "text"
    assert choose_format("auto", pipe, {}) == "json"
    assert choose_format("auto", pipe, {"JOURNAL_STREAM": _journal(pipe)}) == "json"
    # the journal variable names another stream (a shell started from a service): the
    # terminal still gets text
    assert choose_format("auto", terminal, {"JOURNAL_STREAM": _journal(pipe)}) == "text"
    assert choose_format("json", terminal, {}) == "json"
    assert choose_format("text", pipe, {}) == "text"


def test_colours_only_on_a_terminal_without_no_color(terminal: IO[str], pipe: IO[str]) -> None:
    assert wants_color(terminal, {"TERM": "xterm"})
    assert not wants_color(terminal, {"NO_COLOR": "1"})
    assert wants_color(terminal, {"NO_COLOR": ""})  # no-color.org: set *and* not empty
    assert not wants_color(terminal, {"TERM": "dumb"})
    assert not wants_color(pipe, {})


def test_stats_lines_show_at_any_level_on_a_terminal(
    terminal: IO[str], pipe: IO[str], restore_logging: None
) -> None:
    stats = logging.getLogger(STATS_LOGGER)
    assert configure_logging("warning", terminal, fmt="auto") == "text"
    assert console_format() == "text"
    assert stats.isEnabledFor(logging.INFO)
    assert not logging.getLogger("agent.app.components").isEnabledFor(logging.INFO)
    # a later call without fmt (the daemon, once its config is read) keeps the choice
    assert configure_logging("warning", pipe) == "json"
    assert not stats.isEnabledFor(logging.INFO), "in JSON the level applies to stats too"
    assert configure_logging("warning", pipe, fmt="text") == "text"
    assert configure_logging("error", terminal) == "text"
    assert stats.isEnabledFor(logging.INFO)


def _record(msg: str, level: int = logging.INFO, **fields: object) -> logging.LogRecord:
    record = logging.LogRecord("agent.pipeline.sources.base", level, __file__, 1, msg, (), None)
    record.fields = dict(fields)
    return record


def test_text_format_line_key_fields_and_state_colour() -> None:
    plain = TextFormatter(color=False)
    line = plain.format(
        _record("source cam: connecting → streaming: receiving frames", source="cam",
                old="connecting", new="streaming", uri="rtsp://cam/1", attempt=0)
    )  # fmt: skip
    assert line[12:] == (
        " INFO  pipeline source cam: connecting → streaming: receiving frames  uri=rtsp://cam/1"
    )
    painted = TextFormatter(color=True).format(
        _record("source cam: streaming → failed: gave up", old="streaming", new="failed")
    )
    assert "→ \x1b[31;1mfailed\x1b[0m: gave up" in painted
    gov = _record(
        "governor: memory_critical: 98 % used",
        logging.WARNING,
        event="governor",
        governor={"from_state": "memory_high", "to_state": "memory_critical"},
    )
    assert "\x1b[33;1mWARN \x1b[0m" in TextFormatter(color=True).format(gov)
    painted = TextFormatter(color=True).format(gov)
    assert "governor: \x1b[31;1mmemory_critical\x1b[0m: 98 %" in painted
    ota = _record("OTA det v3: probation", update="u1", state="probation", model="det")
    painted = TextFormatter(color=True).format(ota)
    assert painted.endswith("\x1b[33mprobation\x1b[0m  \x1b[2mupdate\x1b[0m=u1")
    stats = _record("det int8 ×2: cam 15.0 fps", event="stats", stats={"x": 1}, power_w=7.5)
    assert plain.format(stats).endswith("det int8 ×2: cam 15.0 fps"), "stats: the message only"


def test_text_format_puts_the_fix_on_its_own_line() -> None:
    error = ModelError("model.onnx is not ONNX", fix="export the model with opset >= 13")
    record = logging.LogRecord(
        "agent.engine.prepare", logging.ERROR, __file__, 1, "%s", (str(error),),
        (ModelError, error, None),
    )  # fmt: skip
    lines = TextFormatter(color=False).format(record).splitlines()
    assert lines[0].endswith("ERROR engine   model.onnx is not ONNX")
    assert lines[1] == " " * 28 + "fix: export the model with opset >= 13"
    assert len(lines) == 2, "a user error carries no traceback"
    fixed = _record("cannot open /dev/video0", logging.ERROR, fix="add the user to 'video'")
    assert (
        TextFormatter(color=False)
        .format(fixed)
        .splitlines()[1]
        .endswith("fix: add the user to 'video'")
    )


def test_json_format_keeps_every_field() -> None:
    record = _record("hello", event="stats", stats={"fps": 1.5})
    record.extra_key = "x"
    doc = json.loads(JsonFormatter().format(record))
    assert doc["msg"] == "hello" and doc["stats"] == {"fps": 1.5} and doc["extra_key"] == "x"
    assert doc["level"] == "info" and doc["logger"] == "agent.pipeline.sources.base"
    assert log_fields(a=1) == {"fields": {"a": 1}}
