"""Device profiles: the shipped YAML validates, and detection picks the right one per board."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.config.device import DeviceProfile
from agent.config.profiles.board import BoardInfo, module_part_number, parse_l4t_release, read_board
from agent.config.profiles.detect import detect
from agent.config.profiles.store import ProfileStore, default_profiles_dir
from agent.config.yaml import load_model_file
from agent.core.errors import ConfigError, DetectionError, ProfileNotFound
from tests.assets import BOARDS, PROFILES_DIR

EXPECTED = {
    "orin-nano-4gb",
    "orin-nano-8gb",
    "orin-nx-8gb",
    "orin-nx-16gb",
    "agx-orin-32gb",
    "agx-orin-64gb",
    "agx-thor-t5000",
    "agx-thor-t4000",
    "cpu",
}


@pytest.fixture(scope="module")
def store() -> ProfileStore:
    return ProfileStore(PROFILES_DIR)


def write_dt(root: Path, model: bytes | None = None, compatible: bytes | None = None) -> None:
    dt = root / "proc" / "device-tree"
    dt.mkdir(parents=True, exist_ok=True)
    if model is not None:
        (dt / "model").write_bytes(model)
    if compatible is not None:
        (dt / "compatible").write_bytes(compatible)


# --------------------------------------------------------------------------- the shipped YAML


def test_exactly_the_nine_profiles_ship(store: ProfileStore) -> None:
    assert set(store.names()) == EXPECTED
    assert len(store.names()) == len(EXPECTED)


@pytest.mark.parametrize("path", sorted(PROFILES_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_profile_validates_and_is_named_after_its_file(path: Path) -> None:
    profile = load_model_file(path, DeviceProfile)
    assert profile.name == path.stem
    assert path.read_text(encoding="utf-8").startswith("#"), "cite the sources at the top"


def test_default_dir_is_the_repo_device_profiles() -> None:
    assert default_profiles_dir().resolve() == PROFILES_DIR.resolve()


def test_jetson_profiles_identify_their_board(store: ProfileStore) -> None:
    for profile in store.all():
        ident = profile.identity
        if ident.family == "cpu":
            assert profile.build.backend == "onnxruntime"
            assert ident.gpu_compute_capability is None
            assert ident.power_modes == []
            assert profile.power_budget_w() is None
            continue
        assert ident.device_tree_models, profile.name
        assert ident.module_part_numbers, profile.name
        assert profile.build.backend == "tensorrt"
        assert profile.build.precisions == ["int8", "fp16", "fp32"]
        assert profile.power_budget_w() is not None, f"{profile.name} needs a default mode"
        expected_cc = "11.0" if ident.family == "agx-thor" else "8.7"
        assert ident.gpu_compute_capability == expected_cc, profile.name
        if ident.family in ("orin-nano", "agx-thor"):
            assert ident.dla_cores == 0
            assert not profile.build.dla.enabled


def test_small_boards_get_tighter_limits_than_big_ones(store: ProfileStore) -> None:
    nano4 = store.load("orin-nano-4gb")
    nano8 = store.load("orin-nano-8gb")
    agx64 = store.load("agx-orin-64gb")
    assert nano4.runtime.streams == 1
    assert nano4.shapes.height.max <= 640
    assert nano4.shapes.width.max <= 640
    assert nano4.build.workspace_mib < nano8.build.workspace_mib < agx64.build.workspace_mib
    assert nano4.build.build_memory_cap_mib < nano8.build.build_memory_cap_mib
    assert nano4.runtime.max_batch < nano8.runtime.max_batch < agx64.runtime.max_batch
    assert nano4.monitor.memory_critical_pct < nano8.monitor.memory_critical_pct


def test_orin_nano_8gb_has_the_super_modes(store: ProfileStore) -> None:
    modes = {m.name: m.budget_w for m in store.load("orin-nano-8gb").identity.power_modes}
    assert modes["25W"] == 25
    assert "MAXN_SUPER" in modes
    assert {"15W", "7W"} <= modes.keys()


def test_memory_variants_are_told_apart_by_part_number(store: ProfileStore) -> None:
    seen: dict[str, str] = {}
    for profile in store.all():
        for part in profile.identity.module_part_numbers:
            assert part not in seen, f"{part} is in both {seen.get(part)} and {profile.name}"
            seen[part] = profile.name


# --------------------------------------------------------------------------- the store


def test_unknown_name_suggests_the_nearest(store: ProfileStore) -> None:
    with pytest.raises(ProfileNotFound) as info:
        store.load("orin-nano")
    text = str(info.value)
    assert "'orin-nano-8gb'" in text
    assert "'orin-nano-4gb'" in text
    assert "agx-orin-64gb" in text  # the full list follows


def test_misspelled_name_suggests_the_right_one(store: ProfileStore) -> None:
    with pytest.raises(ProfileNotFound, match="did you mean 'agx-thor-t5000'"):
        store.load("agx_thor_t5000")


def test_path_traversal_is_not_a_profile(store: ProfileStore) -> None:
    with pytest.raises(ProfileNotFound):
        store.path_of("../device_profiles/cpu")


def test_load_checks_the_name_matches_the_file(tmp_path: Path) -> None:
    text = (PROFILES_DIR / "cpu.yaml").read_text(encoding="utf-8")
    (tmp_path / "host.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(ProfileNotFound, match="declares name 'cpu'"):
        ProfileStore(tmp_path).load("host")


def _bad_copy(
    tmp_path: Path, name: str, old: str, new: str, also: tuple[str, str] | None = None
) -> tuple[Path, int]:
    """Copy profile ``name`` into tmp_path with ``old`` replaced (and ``also``, a second edit);
    return the copy and the line where ``new`` lands."""
    text = (PROFILES_DIR / f"{name}.yaml").read_text(encoding="utf-8")
    for before, _ in [(old, new), *([also] if also else [])]:
        assert text.count(before) == 1, f"{before!r} must occur once in {name}.yaml"
    text = text.replace(old, new)
    if also:
        text = text.replace(*also)
    path = tmp_path / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    offset = text.index(new)
    line = text.count("\n", 0, offset) + 1
    return path, line


def test_min_above_max_is_reported_on_its_line(tmp_path: Path) -> None:
    path, line = _bad_copy(
        tmp_path,
        "orin-nano-8gb",
        "height: {min: 224, opt: 416, max: 960}",
        "height: {min: 1024, opt: 416, max: 960}",
    )
    with pytest.raises(ConfigError) as info:
        ProfileStore(tmp_path).load("orin-nano-8gb")
    issue = info.value.issues[0]
    assert issue.line == line
    assert issue.key == "shapes.height"
    assert "min <= opt <= max" in issue.message
    assert issue.file == str(path)


def test_workspace_above_half_the_memory_is_reported_on_its_line(tmp_path: Path) -> None:
    # The cap goes up too (still within 8 GB), so only the half-the-memory rule is broken.
    path, line = _bad_copy(
        tmp_path,
        "orin-nano-8gb",
        "workspace_mib: 512",
        "workspace_mib: 5000",
        also=("build_memory_cap_mib: 3072", "build_memory_cap_mib: 8000"),
    )
    with pytest.raises(ConfigError) as info:
        load_model_file(path, DeviceProfile)
    issue = info.value.issues[0]
    assert issue.line == line
    assert issue.key == "build.workspace_mib"
    assert "half the device memory" in issue.message


def test_dla_on_a_board_without_one_is_rejected(tmp_path: Path) -> None:
    path, line = _bad_copy(
        tmp_path,
        "orin-nano-8gb",
        "dla: {enabled: false, core: 0, gpu_fallback: true}",
        "dla: {enabled: true, core: 0, gpu_fallback: true}",
    )
    with pytest.raises(ConfigError) as info:
        load_model_file(path, DeviceProfile)
    issue = info.value.issues[0]
    assert issue.key == "build.dla.enabled"
    assert issue.line == line


# --------------------------------------------------------------------------- reading boards


def test_read_board_parses_a_real_tree() -> None:
    board = read_board(BOARDS / "orin-nano-8gb-devkit")
    assert board.model == "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super"
    assert board.compatible == (
        "nvidia,p3768-0000+p3767-0005-super",
        "nvidia,p3767-0005",
        "nvidia,tegra234",
    )
    assert board.l4t_release == "36.4.3"
    assert board.memory_mib == 7620
    assert board.module_part_number == "p3767-0005"
    assert board.is_tegra


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64", "36.4.3"),
        ("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref", "35.4.1"),
        ("# R32 (release), REVISION: 7, GCID: 1", "32.7.0"),
        ("Ubuntu 22.04", None),
        ("", None),
    ],
)
def test_parse_l4t_release(line: str, expected: str | None) -> None:
    assert parse_l4t_release(line) == expected


@pytest.mark.parametrize(
    ("compatible", "expected"),
    [
        (("nvidia,p3768-0000+p3767-0004-super", "nvidia,tegra234"), "p3767-0004"),
        (("nvidia,p3701-0005", "nvidia,tegra234"), "p3701-0005"),
        (("nvidia,p3509-0000+p3668-0001", "nvidia,tegra194"), "p3668-0001"),
        (("raspberrypi,4-model-b", "brcm,bcm2711"), None),
        ((), None),
    ],
)
def test_module_part_number(compatible: tuple[str, ...], expected: str | None) -> None:
    assert module_part_number(compatible) == expected


def test_x86_host_has_memory_but_no_device_tree() -> None:
    board = read_board(BOARDS / "x86-host")
    assert board == BoardInfo(memory_mib=16318248 // 1024)
    assert not board.is_tegra


# --------------------------------------------------------------------------- detection


@pytest.mark.parametrize(
    ("board", "expected"),
    [
        ("orin-nano-8gb-devkit", "orin-nano-8gb"),
        ("orin-nano-4gb", "orin-nano-4gb"),
        ("orin-nx-16gb", "orin-nx-16gb"),
        ("agx-orin-64gb", "agx-orin-64gb"),
        ("agx-orin-64gb-jp72", "agx-orin-64gb"),
        ("orin-nano-8gb-devkit-jp72", "orin-nano-8gb"),
        ("agx-thor-t5000-devkit", "agx-thor-t5000"),
        ("agx-thor-t4000", "agx-thor-t4000"),
    ],
)
def test_detect_on_real_board_trees(board: str, expected: str, store: ProfileStore) -> None:
    result = detect(BOARDS / board, store)
    assert result.profile == expected
    assert result.board.model is not None
    assert result.board.model in result.reason
    assert expected in result.reason


def test_shared_model_string_is_split_by_part_number(store: ProfileStore) -> None:
    result = detect(BOARDS / "orin-nano-4gb", store)
    assert result.profile == "orin-nano-4gb"
    assert "p3767-0004" in result.reason


def test_without_a_part_number_memtotal_decides(
    store: ProfileStore, board_root: Callable[[str], Path]
) -> None:
    for board, expected in [
        ("orin-nano-4gb", "orin-nano-4gb"),
        ("orin-nano-8gb-devkit", "orin-nano-8gb"),
    ]:
        root = board_root(board)
        write_dt(root, compatible=b"nvidia,tegra234\0")
        result = detect(root, store)
        assert result.profile == expected, result.reason
        assert "MemTotal" in result.reason


def test_orin_nx_8gb_is_told_from_16gb(
    store: ProfileStore, board_root: Callable[[str], Path]
) -> None:
    root = board_root("orin-nx-16gb")
    write_dt(root, compatible=b"nvidia,p3768-0000+p3767-0001\0nvidia,p3767-0001\0nvidia,tegra234\0")
    (root / "proc" / "meminfo").write_text("MemTotal:        7802880 kB\n", encoding="utf-8")
    assert detect(root, store).profile == "orin-nx-8gb"


def test_custom_carrier_model_falls_back_to_part_number(
    store: ProfileStore, board_root: Callable[[str], Path]
) -> None:
    root = board_root("agx-orin-64gb")
    write_dt(root, model=b"Acme Rugged Box AGX\0")
    result = detect(root, store)
    assert result.profile == "agx-orin-64gb"
    assert "p3701-0005" in result.reason
    assert "Acme Rugged Box AGX" in result.reason


def test_non_jetson_host_falls_back_to_cpu_naming_the_missing_file(store: ProfileStore) -> None:
    root = BOARDS / "x86-host"
    result = detect(root, store)
    assert result.profile == "cpu"
    assert str(root / "proc" / "device-tree" / "model") in result.reason
    assert "not a Jetson" in result.reason


def test_unknown_board_model_falls_back_to_cpu(tmp_path: Path, store: ProfileStore) -> None:
    root = tmp_path / "pi"
    write_dt(root, model=b"Raspberry Pi 4 Model B Rev 1.4\0", compatible=b"raspberrypi,4-model-b\0")
    result = detect(root, store)
    assert result.profile == "cpu"
    assert "Raspberry Pi 4 Model B Rev 1.4" in result.reason
    assert "matches no device profile" in result.reason


def test_garbage_model_file_gives_cpu_and_a_warning(
    tmp_path: Path, store: ProfileStore, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "garbage"
    write_dt(root, model=b"\xff\xfe\x00\x9c\x80binary junk\x07\x00")
    with caplog.at_level(logging.WARNING, logger="agent.config.profiles.board"):
        result = detect(root, store)
    assert result.profile == "cpu"
    assert result.board.model is None
    assert "model" in result.reason
    assert any("model" in r.getMessage() for r in caplog.records)


def test_unreadable_model_file_gives_cpu_not_an_exception(
    tmp_path: Path, store: ProfileStore, caplog: pytest.LogCaptureFixture
) -> None:
    # A directory where the file should be fails to read with an OSError even as root.
    root = tmp_path / "broken"
    (root / "proc" / "device-tree" / "model").mkdir(parents=True)
    with caplog.at_level(logging.WARNING, logger="agent.config.profiles.board"):
        result = detect(root, store)
    assert result.profile == "cpu"
    assert "cannot read" in result.reason
    assert caplog.records


def test_garbled_release_and_meminfo_become_none(board_root: Callable[[str], Path]) -> None:
    root = board_root("agx-thor-t5000-devkit")
    (root / "etc" / "nv_tegra_release").write_bytes(b"\x00\x01 not a release")
    (root / "proc" / "meminfo").write_text("MemFree: 12 kB\n", encoding="utf-8")
    board = read_board(root)
    assert board.l4t_release is None
    assert board.jetpack is None
    assert board.memory_mib is None
    assert board.model == "NVIDIA Jetson AGX Thor Developer Kit"


def test_detect_needs_an_existing_root(tmp_path: Path, store: ProfileStore) -> None:
    with pytest.raises(DetectionError, match="not a directory"):
        detect(tmp_path / "missing", store)


def test_detect_needs_a_cpu_profile_to_fall_back_to(tmp_path: Path) -> None:
    shutil.copy(PROFILES_DIR / "agx-thor-t5000.yaml", tmp_path / "agx-thor-t5000.yaml")
    with pytest.raises(DetectionError, match="'cpu' profile"):
        detect(BOARDS / "x86-host", ProfileStore(tmp_path))


@pytest.mark.parametrize(
    ("l4t", "jetpack"),
    [
        ("36.4.3", "6.2"),  # the Orin fixtures' nv_tegra_release
        ("36.4.4", "6.2.1"),
        ("36.4.7", "6.2.1"),
        ("36.4.8", "6.2.1"),  # a later revision: the newest known at or below it
        ("35.4.1", "5.1.2"),  # the Xavier NX and JetPack 5 Orin fixtures
        ("35.6.2", "5.1.5"),
        ("32.7.1", "4.6.1"),
        ("35.6.4", "5.1.6"),
        ("36.5.0", "6.2.2"),
        ("38.2.0", "7.0"),
        ("38.2.1", "7.0"),
        ("38.4.0", "7.1"),
        ("38.2.2", "7.0"),
        ("39.2.0", "7.2"),
        ("39.2.1", "7.2.1"),  # the JetPack 7.2 Orin fixtures
        ("39.2.2", "7.2.1"),  # a later revision of R39.2 (7.2.2's release is not in the table)
        ("37.0.0", None),  # a major we do not know
        ("bogus", None),
        (None, None),
    ],
)
def test_jetpack_for_l4t(l4t: str | None, jetpack: str | None) -> None:
    from agent.config.profiles.board import jetpack_for_l4t

    assert jetpack_for_l4t(l4t) == jetpack


def test_power_mode_names_must_be_unique_but_ids_may_repeat(tmp_path: Path) -> None:
    text = (PROFILES_DIR / "agx-orin-32gb.yaml").read_text()
    assert "{id: 3, name: MODE_50W" in text and "{id: 3, name: MODE_40W" in text
    dup = text.replace("name: MODE_50W,", "name: mode_40w,")
    (tmp_path / "agx-orin-32gb.yaml").write_text(dup)
    with pytest.raises(ConfigError, match="names must be unique"):
        load_model_file(tmp_path / "agx-orin-32gb.yaml", DeviceProfile)
