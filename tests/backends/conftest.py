"""Fixtures shared by the backend tests.

* ``fake`` — the fake ``tensorrt`` of each API generation (8.6, 10.3, 11.4.1; parametrized),
  installed as ``sys.modules["tensorrt"]`` for the test.
* ``fake11`` — the same for 11.4.1 alone (strongly typed networks only).
"""

from __future__ import annotations

import sys
from types import ModuleType

import pytest

from tests.fakes.tensorrt import GENERATIONS, make_fake_tensorrt


def _install(generation: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    module = make_fake_tensorrt(generation)
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    return module


@pytest.fixture(params=GENERATIONS)
def fake(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    return _install(request.param, monkeypatch)


@pytest.fixture
def fake11(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    return _install("11.4.1", monkeypatch)
