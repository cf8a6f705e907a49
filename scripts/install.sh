#!/usr/bin/env bash
# Install Edge Agent as a systemd service on a Jetson (or any systemd host).
#
#   sudo scripts/install.sh                 install or upgrade, enable the unit
#   sudo scripts/install.sh --now           ... and (re)start it
#   sudo scripts/install.sh --uninstall     remove program and unit; keep config and state
#   sudo scripts/install.sh --uninstall --purge   ... and config, state, cache and the user
#   scripts/install.sh --root DIR           staged install into DIR (or DESTDIR=DIR)
#   options: --prefix DIR (default /opt/edge-agent), --no-venv (skip the venv step; also
#            EDGE_AGENT_NO_VENV=1), --python PYTHON, --dry-run (print what would be done),
#            --jetpack VERSION (6.0, 6, 7.0, 7.2 ...: instead of the one read from
#            /etc/nv_tegra_release; implies a Jetson)
#
# What it does (idempotent: running it twice leaves the same tree):
#   1. a venv at PREFIX/venv with --system-site-packages, so JetPack's TensorRT and its
#      GStreamer-enabled OpenCV are the ones used, and this package installed into it
#      (with the [jetson] extra on a Jetson), constrained by PREFIX/venv/edge-agent-constraints.txt
#      (numpy below the next major of the system's numpy, which JetPack's cv2 is built against;
#      scripts/device_python.py; jetson-stats at the jtop service's major.minor) and, on a Jetson,
#      by constraints/jetpack*.txt for its JetPack (cuda-python of its CUDA; constraints/README.md:
#      L4T R36.0-36.3 → 6.0, R36.4+ → 6, R38 → 7.0, R39 → 7.2; R35 and older are refused),
#      then a check that cv2 and numpy import in the venv;
#   2. the system user edge-agent (sysusers.d file, applied now on a live system) — the unit
#      adds the groups video, and render/jtop where they exist (a drop-in);
#   3. /etc/edge-agent/agent.yaml from systemd/agent.example.yaml unless it exists, and the
#      bundled demo model and calibration frames under /var/lib/edge-agent unless present;
#   4. /etc/systemd/system/edge-agent.service (+ edge-agent.service.d/10-groups.conf) and
#      edge-agent-gpu-power.service (powers an L4T R36+ GPU on once so that its device nodes
#      exist before the agent's device filter is set up; docs/jetson-devices.md), then
#      systemctl daemon-reload and enable — only on a live system where systemd runs.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
ROOT="${DESTDIR:-}"
PREFIX=/opt/edge-agent
PYTHON="${PYTHON:-python3}"
MODE=install
PURGE=0
NOW=0
DRY=0
VENV=1
JETPACK=""
[ "${EDGE_AGENT_NO_VENV:-0}" = 1 ] && VENV=0

usage() { sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "install.sh: error: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --root) ROOT="${2:?--root needs a directory}"; shift 2 ;;
    --root=*) ROOT="${1#--root=}"; shift ;;
    --prefix) PREFIX="${2:?--prefix needs a directory}"; shift 2 ;;
    --prefix=*) PREFIX="${1#--prefix=}"; shift ;;
    --python) PYTHON="${2:?--python needs an interpreter}"; shift 2 ;;
    --jetpack) JETPACK="${2:?--jetpack needs a version (6.0, 6, 7.0, 7.2)}"; shift 2 ;;
    --jetpack=*) JETPACK="${1#--jetpack=}"; shift ;;
    --no-venv) VENV=0; shift ;;
    --uninstall) MODE=uninstall; shift ;;
    --purge) PURGE=1; shift ;;
    --now) NOW=1; shift ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done
case "$PREFIX" in /*) ;; *) die "--prefix must be an absolute path, got '$PREFIX'" ;; esac
if [ -n "$ROOT" ]; then
  mkdir -p "$ROOT"
  ROOT="$(cd "$ROOT" && pwd)"
  [ "$ROOT" = / ] && ROOT=""
fi
if [ -z "$ROOT" ] && [ "$DRY" = 0 ] && [ "$(id -u)" != 0 ]; then
  die "installing into the live system needs root; run with sudo, or stage with --root DIR"
fi

UNIT_DIR="$ROOT/etc/systemd/system"
DROPIN_DIR="$UNIT_DIR/edge-agent.service.d"
SYSUSERS="$ROOT/etc/sysusers.d/edge-agent.conf"
CONF_DIR="$ROOT/etc/edge-agent"
STATE_DIR="$ROOT/var/lib/edge-agent"
CACHE_DIR="$ROOT/var/cache/edge-agent"
DOC_DIR="$ROOT$PREFIX/share/doc/edge-agent"
VENV_DIR="$ROOT$PREFIX/venv"

run() {
  if [ "$DRY" = 1 ]; then
    printf 'would run:'; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}
say() { echo "install.sh: $*"; }
live_systemd() { [ -z "$ROOT" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; }

# write_file DEST MODE: stdin → DEST, only when the content differs (idempotent, no churn).
write_file() {
  local dest="$1" mode="$2" tmp
  tmp="$(mktemp)"
  cat >"$tmp"
  if [ -f "$dest" ] && cmp -s "$tmp" "$dest"; then
    rm -f "$tmp"
    run chmod "$mode" "$dest"
    return 0
  fi
  run install -D -m "$mode" "$tmp" "$dest"
  rm -f "$tmp"
  say "wrote ${dest}"
}

group_exists() {
  # A group of the target system: $ROOT/etc/group when staged, NSS on a live system.
  if [ -n "$ROOT" ]; then
    [ -f "$ROOT/etc/group" ] && grep -q "^$1:" "$ROOT/etc/group"
  else
    getent group "$1" >/dev/null
  fi
}

is_jetson() {
  [ -n "$JETPACK" ] || uname -r | grep -q tegra || [ -f "$ROOT/etc/nv_tegra_release" ]
}

# The JetPack of the L4T release in $ROOT/etc/nv_tegra_release ("# R36 (release), REVISION: 4.3,
# ..."), as the table in agent/config/profiles/board.py has it (tests/systemd check they agree):
# R36.0-36.3 → 6.0, R36.4+ → 6.1/6.2.x ("6"), R38 → 7.0/7.1, R39 → 7.2; R35 → 5, R32 → 4.
# Sets L4T and DETECTED; both stay empty where the file is absent.
L4T=""
DETECTED=""
read_l4t_release() {
  local file="$ROOT/etc/nv_tegra_release" line re
  re='^#[[:space:]]*R([0-9]+)[[:space:]]*\(release\),[[:space:]]*'
  re+='REVISION:[[:space:]]*([0-9]+)(\.[0-9]+)?'
  [ -f "$file" ] || return 0
  line="$(head -n 1 "$file")"
  [[ "$line" =~ $re ]] \
    || die "cannot read the L4T release in $file ('$line'); pass --jetpack 6, 6.0, 7.0 or 7.2"
  L4T="R${BASH_REMATCH[1]}.${BASH_REMATCH[2]}${BASH_REMATCH[3]}"
  case "${BASH_REMATCH[1]}" in
    32) DETECTED=4 ;;
    35) DETECTED=5 ;;
    36) if [ "${BASH_REMATCH[2]}" -lt 4 ]; then DETECTED=6.0; else DETECTED=6; fi ;;
    38) DETECTED=7.0 ;;
    39) DETECTED=7.2 ;;
    *) die "L4T $L4T ($file) is not a release this installer knows;" \
      "pass --jetpack 6, 6.0, 7.0 or 7.2" ;;
  esac
}

# select_jetpack: on a Jetson, sets JP_CONSTRAINTS (constraints/jetpack*.txt) and JP_PYTHON (the
# Python whose TensorRT bindings that JetPack ships); refuses JetPack 4 and 5.
JP_CONSTRAINTS=""
JP_PYTHON=""
select_jetpack() {
  local jp="$JETPACK" from="--jetpack $JETPACK"
  if [ -z "$jp" ]; then
    read_l4t_release
    jp="$DETECTED" from="L4T $L4T in $ROOT/etc/nv_tegra_release"
  fi
  [ -n "$jp" ] || return 0
  case "$jp" in
    5|5.*) die "JetPack 5 is unsupported (Python 3.8 / TensorRT 8.5), upgrade to JetPack 6" \
      "($from)" ;;
    4|4.*) die "JetPack 4 is unsupported (Python 3.6 / TensorRT 8.2), upgrade to JetPack 6" \
      "($from)" ;;
    6.0|6.0.*) JP_CONSTRAINTS=jetpack6.0.txt JP_PYTHON=3.10 ;;
    6|6.[1-9]|6.[1-9].*) JP_CONSTRAINTS=jetpack6.txt JP_PYTHON=3.10 ;;
    7.0|7.0.*|7.1|7.1.*) JP_CONSTRAINTS=jetpack7.0.txt JP_PYTHON=3.12 ;;
    7.2|7.2.*) JP_CONSTRAINTS=jetpack7.2.txt JP_PYTHON=3.12 ;;
    *) die "unknown JetPack '$jp' ($from); pass --jetpack 6, 6.0, 7.0 or 7.2" \
      "(constraints/README.md)" ;;
  esac
  say "JetPack $jp ($from): pip constraints constraints/$JP_CONSTRAINTS, Python $JP_PYTHON"
}

# The jtop client in the venv must have the major.minor of the jtop service (jetson-stats'
# jtop/jtop.py refuses a mismatch): JTOP_PIN pins it to the system's jetson-stats, if any.
JTOP_PIN=""
pin_jtop_to_service() {
  local version
  version="$("$PYTHON" -s -c 'import importlib.metadata as m; print(m.version("jetson-stats"))' \
    2>/dev/null)" || return 0
  [[ "$version" =~ ^([0-9]+)\.([0-9]+) ]] || return 0
  if [ "${BASH_REMATCH[1]}" -lt 7 ] && [ "$JP_PYTHON" = 3.12 ]; then
    die "the system's jetson-stats $version (the jtop service) predates JetPack 7; upgrade it:" \
      "sudo pip3 install -U --break-system-packages jetson-stats && sudo systemctl restart jtop"
  fi
  local pin="jetson-stats==${BASH_REMATCH[1]}.${BASH_REMATCH[2]}.*"
  JTOP_PIN="# the jtop service is jetson-stats $version: its client must share the major.minor
$pin"
  say "jtop client pinned to $pin (the system's jtop service is jetson-stats $version)"
}

# JetPack's TensorRT and cv2 bindings exist for its system Python only (3.10 on 6, 3.12 on 7).
check_python_for_jetpack() {
  local have
  [ -n "$JP_PYTHON" ] || return 0
  have="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  [ "$have" = "$JP_PYTHON" ] && return 0
  local msg="this JetPack's TensorRT bindings are built for Python $JP_PYTHON, but $PYTHON is $have"
  if [ -n "$ROOT" ]; then
    say "warning: $msg (staged install: the venv must be rebuilt on the device)"
  else
    die "$msg; pass --python python$JP_PYTHON (the system's python3)"
  fi
}

install_venv() {
  if [ "$VENV" = 0 ]; then
    say "skipping the venv (--no-venv): the unit expects $PREFIX/venv/bin/edge-agent"
    return 0
  fi
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || die "Python >= 3.10 is required ($("$PYTHON" --version 2>&1)); pass --python PYTHON"
  check_python_for_jetpack
  if [ ! -x "$VENV_DIR/bin/python" ]; then
    run "$PYTHON" -m venv --system-site-packages "$VENV_DIR"
  fi
  local spec="$REPO" constraints="$VENV_DIR/edge-agent-constraints.txt" jp=()
  is_jetson && spec="$REPO[jetson]"
  [ -n "$JP_CONSTRAINTS" ] && jp=(--constraint "$REPO/constraints/$JP_CONSTRAINTS")
  # The system's numpy (read by the system interpreter, without the user site) bounds the venv's:
  # a pip numpy 2 would shadow it and JetPack's cv2, built against numpy 1.x, would not import.
  is_jetson && pin_jtop_to_service
  {
    "$PYTHON" -s "$REPO/scripts/device_python.py" constraints
    [ -z "$JTOP_PIN" ] || echo "$JTOP_PIN"
  } | write_file "$constraints" 0644
  run "$VENV_DIR/bin/python" -m pip --disable-pip-version-check -q install --upgrade \
    "${jp[@]}" --constraint "$constraints" "$spec"
  run "$VENV_DIR/bin/python" "$REPO/scripts/device_python.py" check \
    || die "the venv cannot import cv2/numpy (above): the agent would not start"
  say "installed edge-agent into $VENV_DIR"
}

install_user() {
  # The user for systemd-sysusers (applied at boot on staged images, now on a live system).
  write_file "$SYSUSERS" 0644 <<'EOF'
# Edge Agent service user (scripts/install.sh)
u edge-agent - "Edge Agent" /var/lib/edge-agent /usr/sbin/nologin
m edge-agent video
EOF
  [ -n "$ROOT" ] && return 0
  if ! getent passwd edge-agent >/dev/null; then
    if command -v systemd-sysusers >/dev/null; then
      run systemd-sysusers "$SYSUSERS"
    else
      run useradd --system --user-group --home-dir /var/lib/edge-agent --no-create-home \
        --shell /usr/sbin/nologin edge-agent
    fi
  fi
  local g
  for g in video render jtop; do
    if group_exists "$g" && ! id -nG edge-agent 2>/dev/null | tr ' ' '\n' | grep -qx "$g"; then
      run usermod -aG "$g" edge-agent
    fi
  done
}

install_config() {
  if [ -e "$CONF_DIR/agent.yaml" ]; then
    say "keeping the existing $CONF_DIR/agent.yaml"
  else
    write_file "$CONF_DIR/agent.yaml" 0640 <"$REPO/systemd/agent.example.yaml"
  fi
  # The demo model the example config serves and its calibration frames, each unless already
  # there (cp -R into an existing directory would nest a second copy inside it).
  if [ ! -e "$STATE_DIR/models/shapes-det" ]; then
    run mkdir -p "$STATE_DIR/models"
    run cp -R "$REPO/agent/data/models/shapes-det" "$STATE_DIR/models/shapes-det"
    say "copied the demo model to $STATE_DIR/models/shapes-det"
  fi
  if [ ! -e "$STATE_DIR/calib/shapes-det" ]; then
    run mkdir -p "$STATE_DIR/calib"
    run cp -R "$REPO/agent/data/calib/shapes-det" "$STATE_DIR/calib/shapes-det"
    say "copied the demo calibration frames to $STATE_DIR/calib/shapes-det"
  fi
  run mkdir -p "$CACHE_DIR"
  if [ -z "$ROOT" ] && getent passwd edge-agent >/dev/null; then
    run chown root:edge-agent "$CONF_DIR" "$CONF_DIR/agent.yaml"
    run chmod 0750 "$CONF_DIR"
    run chown -R edge-agent:edge-agent "$STATE_DIR" "$CACHE_DIR"
  fi
}

install_unit() {
  sed "s#/opt/edge-agent#$PREFIX#g" "$REPO/systemd/edge-agent.service" \
    | write_file "$UNIT_DIR/edge-agent.service" 0644
  sed "s#/opt/edge-agent#$PREFIX#g" "$REPO/systemd/edge-agent-gpu-power.service" \
    | write_file "$UNIT_DIR/edge-agent-gpu-power.service" 0644
  local groups="" g
  for g in render jtop; do
    group_exists "$g" && groups="$groups $g"
  done
  {
    echo "# Written by scripts/install.sh: the supplementary groups that exist on this system"
    echo "# (video is in the unit; render for /dev/dri, jtop for /run/jtop.sock)."
    echo "[Service]"
    [ -n "$groups" ] && echo "SupplementaryGroups=${groups# }"
    true
  } | write_file "$DROPIN_DIR/10-groups.conf" 0644
  write_file "$DOC_DIR/systemd-README.md" 0644 <"$REPO/systemd/README.md"
  write_file "$DOC_DIR/jetson-devices.md" 0644 <"$REPO/docs/jetson-devices.md"
  if live_systemd; then
    run systemctl daemon-reload
    run systemctl enable edge-agent-gpu-power.service edge-agent.service
    if [ "$NOW" = 1 ]; then
      run systemctl restart edge-agent.service
    else
      say "enabled; start it with: sudo systemctl start edge-agent"
    fi
  else
    say "systemd is not running here (or this is a staged install): not enabling the unit"
  fi
}

uninstall() {
  if live_systemd && systemctl list-unit-files edge-agent.service >/dev/null 2>&1; then
    run systemctl disable --now edge-agent.service edge-agent-gpu-power.service || true
  fi
  run rm -f "$UNIT_DIR/edge-agent.service" "$UNIT_DIR/edge-agent-gpu-power.service" \
    "$DROPIN_DIR/10-groups.conf" "$SYSUSERS"
  [ -d "$DROPIN_DIR" ] && run rmdir --ignore-fail-on-non-empty "$DROPIN_DIR"
  run rm -rf "$VENV_DIR" "$DOC_DIR"
  [ -d "$ROOT$PREFIX" ] && run find "$ROOT$PREFIX" -depth -type d -empty -delete
  live_systemd && run systemctl daemon-reload
  if [ "$PURGE" = 1 ]; then
    run rm -rf "$CONF_DIR" "$STATE_DIR" "$CACHE_DIR"
    if [ -z "$ROOT" ] && getent passwd edge-agent >/dev/null; then
      run userdel edge-agent
    fi
    say "removed program, unit, configuration, state, cache and the user"
  else
    say "removed program and unit; kept $CONF_DIR, $STATE_DIR and $CACHE_DIR (--purge removes them)"
  fi
}

if [ "$MODE" = uninstall ]; then
  uninstall
else
  select_jetpack
  install_venv
  install_user
  install_config
  install_unit
  say "done${ROOT:+ (staged under $ROOT)}"
fi
