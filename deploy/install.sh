#!/usr/bin/env bash
# Install trainguard on a training node: venv under /opt, config under /etc/trainguard, the
# systemd unit, the cron table and the logrotate snippet. Idempotent: run it again to upgrade;
# an existing config or workspace is never overwritten.
#
#   sudo deploy/install.sh [--dry-run] [--workspace DIR] [--user NAME] [--root DIR]
#                          [--python PYTHON] [--skip-venv] [--enable]
#
#   --dry-run      print every step, change nothing
#   --workspace    the training base dir to supervise (default /srv/trainguard/run1); created
#                  with `daemon-watchdog init` (the example trainer) if it does not exist yet
#   --user         the account that runs the watchdog and cron jobs (default trainguard)
#   --root         install below DIR instead of / (staging, packaging, tests): no user is
#                  created and systemctl is not called
#   --python       interpreter for the venv (default python3, >= 3.10)
#   --skip-venv    do not create or upgrade the venv (it must exist already)
#   --enable       also `systemctl enable --now trainguard-watchdog`
set -euo pipefail

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRY_RUN=0 ROOT="" WORKSPACE=/srv/trainguard/run1 RUN_USER=trainguard PYTHON=python3
SKIP_VENV=0 ENABLE=0

die() { echo "install.sh: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --workspace) WORKSPACE="${2:?--workspace needs a folder}"; shift ;;
        --user) RUN_USER="${2:?--user needs a name}"; shift ;;
        --root) ROOT="${2:?--root needs a folder}"; shift ;;
        --python) PYTHON="${2:?--python needs an interpreter}"; shift ;;
        --skip-venv) SKIP_VENV=1 ;;
        --enable) ENABLE=1 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) die "unknown option: $1 (see --help)" ;;
    esac
    shift
done
# Both end up inside sed expressions, TOML and the unit: allow only plain, safe characters.
[[ "$WORKSPACE" =~ ^/[A-Za-z0-9._/@+-]*$ ]] && [[ "$WORKSPACE" != *..* ]] \
    || die "--workspace must be an absolute path of letters, digits and ._/@+- : $WORKSPACE"
[[ "$RUN_USER" =~ ^[a-z_][a-z0-9_-]{0,31}$ ]] || die "--user is not a valid user name: $RUN_USER"
ROOT="${ROOT%/}"

PREFIX="$ROOT/opt/trainguard"
VENV="$PREFIX/venv"
ETC="$ROOT/etc/trainguard"
CONFIG="$ETC/trainguard.toml"
WS="$ROOT$WORKSPACE"

# Run a command, or with --dry-run only show it. Arguments stay an argv: no eval, no shell.
step() {
    echo "+ $*"
    if [ "$DRY_RUN" = 0 ]; then "$@"; fi
}

# Copy a file only when its content differs, so a second run changes nothing.
place() {
    local src="$1" dest="$2" mode="$3"
    if [ -f "$dest" ] && cmp -s "$src" "$dest"; then
        echo "= $dest (unchanged)"
    else
        step install -D -m "$mode" "$src" "$dest"
    fi
}

if [ -z "$ROOT" ] && [ "$DRY_RUN" = 0 ] && [ "$(id -u)" != 0 ]; then
    die "run as root (or use --root DIR to stage, --dry-run to look)"
fi

# 1. the service account (only on the real system)
if [ -z "$ROOT" ] && ! id -u "$RUN_USER" >/dev/null 2>&1; then
    step useradd --system --home-dir /nonexistent --shell /usr/sbin/nologin "$RUN_USER"
fi

# 2. the venv, with py-spy for hang stacks
if [ "$SKIP_VENV" = 0 ]; then
    if [ ! -x "$VENV/bin/python" ]; then
        step "$PYTHON" -m venv "$VENV"
    fi
    step "$VENV/bin/python" -m pip install --quiet --upgrade "$SRC[stacks]"
elif [ ! -x "$VENV/bin/python" ] && [ "$DRY_RUN" = 0 ]; then
    die "--skip-venv, but there is no venv at $VENV"
fi

# 3. the workspace and its config (never overwritten)
CREATED_WS=0
if [ ! -e "$WS/trainguard.toml" ]; then
    [ -e "$WS" ] || CREATED_WS=1
    step "$VENV/bin/daemon-watchdog" init "$WS"
else
    echo "= $WS (exists, kept)"
fi
if [ ! -e "$CONFIG" ]; then
    step install -d -m 0755 "$ETC"
    # The unit reads /etc/trainguard/trainguard.toml: point its base_dir at the workspace.
    if [ "$DRY_RUN" = 0 ]; then
        sed "s|^base_dir = .*|base_dir = \"$WORKSPACE\"|" "$WS/trainguard.toml" > "$CONFIG.tmp"
        mv "$CONFIG.tmp" "$CONFIG"
    fi
    echo "+ wrote $CONFIG (base_dir = \"$WORKSPACE\")"
else
    echo "= $CONFIG (exists, kept)"
fi

# 4. unit, cron table, logrotate, log folder
# The unit and the cron table name the service account: render them for --user.
RENDERED="$(mktemp -d)"
trap 'rm -rf "$RENDERED"' EXIT
sed -e "s/^User=trainguard\$/User=$RUN_USER/" -e "s/^Group=trainguard\$/Group=$RUN_USER/" \
    "$SRC/deploy/trainguard-watchdog.service" > "$RENDERED/unit"
sed -E "s/^([0-9*][^ ]* +[^ ]+ +[^ ]+ +[^ ]+ +[^ ]+ +)trainguard /\1$RUN_USER /" \
    "$SRC/deploy/trainguard.cron" > "$RENDERED/cron"
place "$RENDERED/unit" "$ROOT/etc/systemd/system/trainguard-watchdog.service" 0644
place "$RENDERED/cron" "$ROOT/etc/cron.d/trainguard" 0644
place "$SRC/deploy/trainguard.logrotate" "$ROOT/etc/logrotate.d/trainguard" 0644
# /var/cache/trainguard: compiled crash rules, shared by the service (CacheDirectory=) and the
# cron jobs (CACHE_DIRECTORY= in the cron table); the service user has no home to keep them in.
for dir in /var/log/trainguard /var/cache/trainguard; do
    if [ ! -d "$ROOT$dir" ]; then
        step install -d -m 0750 "$ROOT$dir"
    fi
done
# node_exporter's textfile collector folder, where the hourly health-check writes its metrics
# (made if missing; node_exporter reads it with --collector.textfile.directory).
TEXTFILE=/var/lib/node_exporter/textfile_collector
if [ ! -d "$ROOT$TEXTFILE" ]; then
    step install -d -m 0755 "$ROOT$TEXTFILE"
fi
if [ -z "$ROOT" ]; then
    step chown "$RUN_USER:$RUN_USER" /var/log/trainguard /var/cache/trainguard "$TEXTFILE"
    # Only a workspace this run created is handed over whole; an existing folder (someone's
    # home, a shared data disk) keeps its owners: chown what the service needs yourself.
    if [ "$CREATED_WS" = 1 ]; then
        step chown -R "$RUN_USER:$RUN_USER" "$WS"
    else
        echo "= $WS keeps its owners: make sure $RUN_USER can write there"
    fi
fi

# 5. systemd
if [ -z "$ROOT" ] && command -v systemctl >/dev/null 2>&1; then
    step systemctl daemon-reload
    if [ "$ENABLE" = 1 ]; then
        step systemctl enable --now trainguard-watchdog
    fi
fi

echo "done. Check the config:   $VENV/bin/daemon-watchdog config -c $CONFIG"
echo "      start supervising:  systemctl enable --now trainguard-watchdog"
echo "      and look:           $VENV/bin/daemon-watchdog status -c $CONFIG"
