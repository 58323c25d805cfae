#!/usr/bin/env bash
# Starts the emulator of the service on 127.0.0.1 and a free port, runs the playbook against
# it, and stops it whatever happens.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
# ansible-test runs a copy of this target outside the collection; the collection itself is on
# ANSIBLE_COLLECTIONS_PATH.
server=""
IFS=: read -r -a roots <<<"${ANSIBLE_COLLECTIONS_PATH:-}"
for candidate in "$here/../../../emulator/server.py" \
        "${roots[@]/%//ansible_collections/secretserver/backup/tests/emulator/server.py}"; do
    if [ -f "$candidate" ]; then
        server=$candidate
        break
    fi
done
[ -n "$server" ] || { echo "tests/emulator/server.py not found"; exit 1; }
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

# ansible-test points ANSIBLE_PYTHON_INTERPRETER at a placeholder meant for its own inventory;
# this play runs on localhost with the Python that runs the tests.
ansible-playbook -i localhost, -c local "$here/playbook.yml" \
    -e "ansible_python_interpreter=$(command -v python)" \
    -e "emulator_url=$(cat "$work/url")" -e "work_dir=$work" "$@"
