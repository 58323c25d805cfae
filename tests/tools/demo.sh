#!/usr/bin/env bash
# make demo: back up the emulator's exports twice with playbooks/backup.yml and show that the
# archive is stored owner-only, byte-for-byte what was served, and not fetched again.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BIN="${SSB_VENV_BIN:-$ROOT/.venv/bin}"
PY="$BIN/python"
WORK="$ROOT/.tmp/demo"
DEST="$WORK/backups"
EMU="$ROOT/tests/tools/emulator.py"

step() { printf '\n==> demo: %s\n' "$*"; }

stop_emulator() { "$PY" "$EMU" stop --dir "$WORK/emulator" || true; }

step "start the emulator on 127.0.0.1"
rm -rf "$DEST" && mkdir -p "$WORK"
URL="$("$PY" "$EMU" start --dir "$WORK/emulator")"
trap stop_emulator EXIT
echo "EMULATOR_URL=$URL"

export TSS_USERNAME=backup TSS_PASSWORD=backup-password
export ANSIBLE_COLLECTIONS_PATH="$ROOT/.tmp/collections"
# Modules run on the venv's Python, which has requests; discovery could pick one that has not.
export ANSIBLE_PYTHON_INTERPRETER="$PY"
export ANSIBLE_NOCOLOR=1 NO_PROXY="127.0.0.1,localhost" no_proxy="127.0.0.1,localhost"
export PATH="$BIN:$PATH"

play() {
    ansible-playbook -i localhost, -c local "$ROOT/playbooks/backup.yml" \
        -e "backup_exports_base_url=$URL" -e "backup_exports_dest=$DEST" | tee "$WORK/$1.log"
}

step "first run: downloads the export"
play run1
before="$("$PY" "$EMU" downloads --url "$URL")"

step "second run: must change nothing and download nothing"
play run2
after="$("$PY" "$EMU" downloads --url "$URL")"

step "archives written (mode, path)"
mapfile -t archives < <(find "$DEST" -type f -name '*.zip' | sort)
if [ "${#archives[@]}" -eq 0 ]; then
    echo "no archive was written under $DEST" >&2
    exit 1
fi
stat -c '%a %n' "${archives[@]}"

step "SHA-256 against the bytes the emulator served"
"$PY" "$EMU" match --url "$URL" "${archives[@]}"

step "PLAY RECAP of the second run"
sed -n '/PLAY RECAP/,$p' "$WORK/run2.log"

step "downloads served by the emulator"
echo "after run 1: $before    after run 2: $after    during run 2: $((after - before))"

if grep -E 'changed=[1-9]|failed=[1-9]|unreachable=[1-9]' "$WORK/run2.log" >/dev/null; then
    echo "demo: FAILED, the second run was not a no-op" >&2
    exit 1
fi
if [ "$after" -ne "$before" ]; then
    echo "demo: FAILED, the second run downloaded again" >&2
    exit 1
fi
echo "demo: OK, second run changed=0 and downloaded nothing"
