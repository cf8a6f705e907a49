"""Issue 17: Thor and JetPack 7 boards are detected, JetPack 5 and Xavier are refused with a
message that says what was found, why it cannot run, and what to do."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.config.device import PowerMode
from agent.config.load import resolve_profile
from agent.config.profiles.board import BoardInfo, read_board
from agent.config.profiles.detect import detect
from agent.config.profiles.store import ProfileStore
from agent.config.profiles.support import jetpack_major
from agent.core.errors import DetectionError
from tests.assets import BOARDS, PROFILES_DIR


@pytest.fixture(scope="module")
def store() -> ProfileStore:
    return ProfileStore(PROFILES_DIR)


# --------------------------------------------------------------------------- Thor profiles


def test_thor_t5000_profile(store: ProfileStore) -> None:
    t5000 = store.load("agx-thor-t5000")
    ident = t5000.identity
    assert (ident.family, ident.jetpack, ident.dla_cores) == ("agx-thor", ["7"], 0)
    assert ident.gpu_compute_capability == "11.0"
    assert ident.module_part_numbers == ["p3834-0008"]
    assert ident.memory_mib == 128 * 1024
    modes = {m.name: (m.id, m.budget_w) for m in ident.power_modes}
    assert modes["MAXN"] == (0, 130)
    assert modes["120W"] == (1, 120)
    assert t5000.power_budget_w() == 120  # the default mode, 120W
    assert t5000.power_budget_w(0) == 130


def test_thor_t4000_claims_no_modes_and_keeps_its_70w_ceiling(store: ProfileStore) -> None:
    t4000 = store.load("agx-thor-t4000")
    assert t4000.identity.power_modes == []
    assert t4000.identity.module_part_numbers == ["p3834-0000"]
    assert t4000.power_budget_w() == 70
    assert t4000.identity.memory_mib < store.load("agx-thor-t5000").identity.memory_mib


def test_no_shipped_profile_claims_jetpack_5_or_xavier(store: ProfileStore) -> None:
    for profile in store.all():
        assert "5" not in profile.identity.jetpack, profile.name
        assert "xavier" not in profile.name
        if profile.identity.family in ("orin-nano", "orin-nx", "agx-orin"):
            assert profile.identity.jetpack == ["6", "7"], profile.name


def test_power_budget_ceiling_admits_thor_but_not_nonsense() -> None:
    assert PowerMode(id=0, name="MAXN", budget_w=130).budget_w == 130
    with pytest.raises(ValidationError, match="less than or equal to 200"):
        PowerMode(id=0, name="MAXN", budget_w=1300)


# --------------------------------------------------------------------------- JetPack 7 boards


def test_thor_tree_reads_soc_and_jetpack() -> None:
    board = read_board(BOARDS / "agx-thor-t5000-devkit")
    assert board.soc == "tegra264"
    assert board.module_part_number == "p3834-0008"
    assert (board.l4t_release, board.jetpack) == ("38.2.1", "7.0")
    assert board.memory_mib == 125772


@pytest.mark.parametrize(
    ("board", "profile", "jetpack"),
    [
        ("agx-thor-t5000-devkit", "agx-thor-t5000", "7.0"),
        ("agx-thor-t4000", "agx-thor-t4000", "7.1"),
        ("agx-orin-64gb-jp72", "agx-orin-64gb", "7.2.1"),
        ("orin-nano-8gb-devkit-jp72", "orin-nano-8gb", "7.2.1"),
        ("agx-orin-64gb", "agx-orin-64gb", "6.2"),
    ],
)
def test_detect_says_which_part_and_jetpack(
    board: str, profile: str, jetpack: str, store: ProfileStore
) -> None:
    result = detect(BOARDS / board, store)
    assert result.profile == profile
    part = result.board.module_part_number
    assert part is not None and f"module part number {part}" in result.reason
    assert f"= JetPack {jetpack}" in result.reason
    assert "not written for" not in result.reason


def test_profile_not_written_for_the_boards_jetpack_says_so(
    store: ProfileStore, board_root: Callable[[str], Path], caplog: pytest.LogCaptureFixture
) -> None:
    root = board_root("agx-thor-t5000-devkit")
    (root / "etc" / "nv_tegra_release").write_text(
        "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64\n"
    )
    with caplog.at_level(logging.WARNING, logger="agent.config.profiles.detect"):
        result = detect(root, store)
    assert result.profile == "agx-thor-t5000"
    assert "JetPack 6.2, which agx-thor-t5000 was not written for (it lists JetPack 7)" in (
        result.reason
    )
    assert any("agx-thor-t5000" in r.getMessage() for r in caplog.records)


def test_module_no_profile_lists_uses_the_model_match_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("cpu", "agx-thor-t5000"):
        shutil.copy(PROFILES_DIR / f"{name}.yaml", tmp_path / f"{name}.yaml")
    with caplog.at_level(logging.WARNING, logger="agent.config.profiles.detect"):
        result = detect(BOARDS / "agx-thor-t4000", ProfileStore(tmp_path))
    assert result.profile == "agx-thor-t5000"
    assert "no profile lists module p3834-0000" in result.reason
    assert any("p3834-0000" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- refused boards


def test_jetpack_5_orin_is_refused_with_the_upgrade(store: ProfileStore) -> None:
    with pytest.raises(DetectionError) as info:
        detect(BOARDS / "agx-orin-64gb-jp5", store)
    err = info.value
    assert err.message.startswith(
        "'NVIDIA Jetson AGX Orin Developer Kit' (module p3701-0005, nvidia,tegra234) on "
        "JetPack 5.1.2 (L4T R35.4.1): JetPack 5.1.2 is not supported."
    )
    assert "Python 3.8 and TensorRT 8.5" in err.message
    assert "Python >= 3.10" in err.message
    assert err.fix is not None
    assert "JetPack 6.2 (L4T R36.4" in err.fix and "JetPack 7.2 (L4T R39.2" in err.fix
    assert "docs/jetson-devices.md" in err.fix


@pytest.mark.parametrize(
    ("board", "part"), [("xavier-nx", "p3668-0001"), ("xavier-nx-16gb", "p3668-0003")]
)
def test_xavier_is_refused_with_no_release_to_offer(
    board: str, part: str, store: ProfileStore
) -> None:
    with pytest.raises(DetectionError) as info:
        detect(BOARDS / board, store)
    err = info.value
    assert f"(module {part}, nvidia,tegra194) on JetPack 5.1.2 (L4T R35.4.1)" in err.message
    assert "Jetson Xavier (Xavier NX, AGX Xavier) is not supported" in err.message
    assert "cannot run JetPack 6 or later (its last JetPack is 5.1.6)" in err.message
    assert "Python 3.8 and TensorRT 8.5" in err.message
    assert err.fix is not None and err.fix.startswith("no edge-agent release supports this board")
    assert "docs/jetson-devices.md" in err.fix


def test_xavier_without_a_release_file_is_still_refused(
    store: ProfileStore, board_root: Callable[[str], Path]
) -> None:
    root = board_root("xavier-nx")
    (root / "etc" / "nv_tegra_release").unlink()
    with pytest.raises(DetectionError, match=r"Jetson Xavier .* is not supported") as info:
        detect(root, store)
    assert "JetPack 5" not in info.value.message  # nothing claimed that was not read


def test_jetpack_4_nano_is_refused(tmp_path: Path, store: ProfileStore) -> None:
    dt = tmp_path / "proc" / "device-tree"
    dt.mkdir(parents=True)
    (dt / "model").write_bytes(b"NVIDIA Jetson Nano Developer Kit\0")
    (dt / "compatible").write_bytes(b"nvidia,p3449-0000-b00+p3448-0000-b00\0nvidia,tegra210\0")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "nv_tegra_release").write_text(
        "# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref, EABI: aarch64\n"
    )
    with pytest.raises(DetectionError) as info:
        detect(tmp_path, store)
    assert "on JetPack 4.6.1 (L4T R32.7.1)" in info.value.message
    assert "Jetson Nano / TX1 is not supported" in info.value.message
    assert "Python 3.6" in info.value.message


@pytest.mark.parametrize(
    ("release", "major"),
    [("32.7.1", 4), ("34.1.1", 5), ("35.6.4", 5), ("36.4.3", 6), ("38.4.0", 7), ("39.2.1", 7)],
)
def test_jetpack_major_follows_the_l4t_major(release: str, major: int) -> None:
    assert jetpack_major(BoardInfo(l4t_release=release)) == major
    assert jetpack_major(BoardInfo()) is None


def test_a_named_jetson_profile_on_jetpack_5_is_refused_too() -> None:
    """``profile: agx-orin-64gb`` skips detection, not the JetPack check; ``profile: cpu`` (ONNX
    Runtime, no TensorRT bindings needed) still runs there."""
    root = BOARDS / "agx-orin-64gb-jp5"
    with pytest.raises(DetectionError, match=r"JetPack 5\.\S* is not supported"):
        resolve_profile("agx-orin-64gb", None, root)
    profile, l4t, how = resolve_profile("cpu", None, root)
    assert profile.name == "cpu" and l4t and l4t.startswith("35.") and how == "--profile cpu"
