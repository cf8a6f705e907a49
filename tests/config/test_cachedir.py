"""The one engine-cache resolver (:mod:`agent.config.cachedir`): its order, rule by rule."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from agent.app.runconfig import DaemonOptions, RunConfig
from agent.config.cachedir import (
    CACHE_ENV,
    SYSTEM_CACHE_DIR,
    cache_dir_help,
    resolve_cache_dir,
)
from agent.config.load import default_config_path, load_run_config

HOME = Path("/home/ana")
USER_UID = 4242  # no passwd entry here: a plain user, not the service account

# Every rule's input set: dropping the rules one by one from the top must reveal the next one.
FULL_ENV = {
    CACHE_ENV: "/srv/shared-cache",
    "CACHE_DIRECTORY": "/var/cache/edge-agent:/var/cache/other",
    "XDG_CACHE_HOME": "/home/ana/.xdg-cache",
    "HOME": str(HOME),
}


def _resolve(
    env: dict[str, str],
    euid: int = USER_UID,
    explicit: Path | str | None = None,
    config: Path | None = None,
) -> tuple[Path, str]:
    choice = resolve_cache_dir(explicit, config, environ=env, euid=euid, home=HOME)
    return choice.path, choice.source


def test_order_explicit_then_config_then_environment_then_defaults() -> None:
    env = dict(FULL_ENV)
    config = Path("/etc/edge-agent/cache")
    assert _resolve(env, explicit=Path("/cli"), config=config) == (Path("/cli"), "--cache-dir")
    assert _resolve(env, config=config) == (config, "the config's cache_dir")
    assert _resolve(env) == (Path("/srv/shared-cache"), f"${CACHE_ENV}")
    del env[CACHE_ENV]
    # systemd's CacheDirectory=: several directories are ':'-separated, the first is ours
    path, source = _resolve(env)
    assert path == Path("/var/cache/edge-agent") and "CACHE_DIRECTORY" in source
    del env["CACHE_DIRECTORY"]
    assert _resolve(env) == (Path("/home/ana/.xdg-cache/edge-agent"), "$XDG_CACHE_HOME")
    del env["XDG_CACHE_HOME"]
    assert _resolve(env)[0] == HOME / ".cache" / "edge-agent"


def test_root_and_the_service_account_share_the_services_cache() -> None:
    """``sudo edge-agent build`` warms the installed service's cache; an explicit
    XDG_CACHE_HOME or EDGE_AGENT_CACHE_DIR still wins for root."""
    path, source = _resolve({"HOME": "/root"}, euid=0)
    assert path == SYSTEM_CACHE_DIR and "root" in source
    assert _resolve({"XDG_CACHE_HOME": "/x"}, euid=0)[0] == Path("/x/edge-agent")
    assert _resolve({CACHE_ENV: "/y"}, euid=0)[0] == Path("/y")


def test_the_service_account_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    real = pwd.getpwuid

    def fake_getpwuid(uid: int) -> pwd.struct_passwd:
        if uid == 998:  # what `useradd --system` gives edge-agent on a device
            return pwd.struct_passwd(
                ("edge-agent", "x", 998, 998, "", "/var/lib/edge-agent", "/usr/sbin/nologin")
            )
        return real(uid)

    monkeypatch.setattr(pwd, "getpwuid", fake_getpwuid)
    path, source = _resolve({"HOME": "/var/lib/edge-agent"}, euid=998)
    assert path == SYSTEM_CACHE_DIR and "edge-agent" in source


def test_empty_and_relative_values_are_ignored() -> None:
    """An empty variable is unset; a relative XDG_CACHE_HOME is invalid per the XDG spec."""
    env = {CACHE_ENV: "", "CACHE_DIRECTORY": "", "XDG_CACHE_HOME": "rel/cache"}
    assert _resolve(env)[0] == HOME / ".cache" / "edge-agent"
    assert _resolve(env, explicit="")[0] == HOME / ".cache" / "edge-agent"


def test_tilde_is_expanded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/bob")
    assert resolve_cache_dir("~/c").path == Path("/home/bob/c")
    assert resolve_cache_dir(environ={CACHE_ENV: "~/e"}).path == Path("/home/bob/e")


def test_help_shows_this_processes_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "c"))
    text = cache_dir_help()
    assert f"default: {tmp_path / 'c'}, chosen by ${CACHE_ENV};" in text
    assert "$XDG_CACHE_HOME/edge-agent" in text and str(SYSTEM_CACHE_DIR) in text
    assert "the config's" not in text
    assert "the config's cache_dir, else" in cache_dir_help(config=True)


def test_run_uses_the_same_resolver(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The embedded default sets no cache_dir: ``run`` lands where ``build`` does; a config
    value and ``--cache-dir`` still win, in that order."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env"))
    cfg = load_run_config(default_config_path())
    assert cfg.cache_dir is None
    assert RunConfig(DaemonOptions()).cache_dir(cfg) == tmp_path / "env"
    assert RunConfig(DaemonOptions()).cache_dir(cfg) == resolve_cache_dir().path
    own = cfg.model_copy(update={"cache_dir": tmp_path / "cfg"})
    assert RunConfig(DaemonOptions()).cache_dir(own) == tmp_path / "cfg"
    cli = RunConfig(DaemonOptions(cache_dir=tmp_path / "cli"))
    assert cli.cache_dir(own) == tmp_path / "cli"


def test_a_config_cache_dir_is_relative_to_the_config_file(tmp_path: Path) -> None:
    text = default_config_path().read_text()
    config = tmp_path / "etc" / "agent.yaml"
    config.parent.mkdir()
    data = default_config_path().parent
    text = text.replace("bundle: models/", f"bundle: {data}/models/")
    text = text.replace("calib_dir: calib/", f"calib_dir: {data}/calib/")
    text = text.replace("uri: samples/", f"uri: {data}/samples/")
    config.write_text(text + "cache_dir: engines\n")
    cfg = load_run_config(config)
    assert cfg.cache_dir == tmp_path / "etc" / "engines"


def test_process_defaults_are_used_when_nothing_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (CACHE_ENV, "CACHE_DIRECTORY", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    expected = SYSTEM_CACHE_DIR if os.geteuid() == 0 else Path.home() / ".cache" / "edge-agent"
    if os.geteuid() != 0 and pwd.getpwuid(os.geteuid()).pw_name == "edge-agent":
        expected = SYSTEM_CACHE_DIR
    assert resolve_cache_dir().path == expected
