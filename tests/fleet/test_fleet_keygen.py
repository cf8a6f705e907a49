"""generate_keypair: modes, key id, no overwrite."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.core.errors import OtaError
from agent.fleet.keygen import generate_keypair
from agent.ota.manifest import key_id
from agent.ota.trust import TrustStore, load_private_key


def test_generate_keypair_mode_and_no_overwrite(tmp_path: Path) -> None:
    pair = generate_keypair(tmp_path / "keys", "ops")
    assert pair.private_key.stat().st_mode & 0o777 == 0o600
    key = load_private_key(pair.private_key)
    assert key_id(key.public_key()) == pair.key_id
    trust = TrustStore.load(tmp_path / "keys")
    assert list(trust.keys) == [pair.key_id] and pair.public_key.suffix == ".pub"
    before = pair.private_key.read_bytes()
    with pytest.raises(OtaError, match="overwrite"):
        generate_keypair(tmp_path / "keys", "ops")
    assert pair.private_key.read_bytes() == before
