#!/usr/bin/env bash
# Starts the emulator of the service on 127.0.0.1 and a free port, runs the playbook against
# it, and stops it whatever happens.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
server=$(cd "$here/../../.." && pwd)/emulator/server.py
work=$(mktemp -d)
python "$server" --port 0 --url-file "$work/url" >"$work/emulator.log" 2>&1 &
emulator=$!
trap 'kill "$emulator" 2>/dev/null || true; wait "$emulator" 2>/dev/null || true; rm -rf "$work"' EXIT

for _ in $(seq 1 100); do
    [ -s "$work/url" ] && break
    kill -0 "$emulator" 2>/dev/null || { cat "$work/emulator.log"; exit 1; }
    sleep 0.1
done
[ -s "$work/url" ] || { echo "the emulator did not start"; cat "$work/emulator.log"; exit 1; }

ansible-playbook -i localhost, -c local "$here/playbook.yml" \
    -e "emulator_url=$(cat "$work/url")" -e "work_dir=$work" "$@"
