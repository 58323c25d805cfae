#!/usr/bin/env bash
# Run make targets in order, go on past a failure so one run shows every broken step,
# and end with a table of each step's result and time. Exit status: 1 if any step failed.
# Usage: run_steps.sh TARGET...   (MAKE in the environment names the make to call)
set -uo pipefail

make_cmd="${MAKE:-make}"
declare -a rows=()
failed=()

for target in "$@"; do
    printf '\n################ make %s ################\n' "$target"
    began=$SECONDS
    if "$make_cmd" --no-print-directory "$target"; then
        result=ok
    else
        result=FAILED
        failed+=("$target")
    fi
    rows+=("$(printf '%-12s %-7s %5ss' "$target" "$result" "$((SECONDS - began))")")
done

printf '\n################ summary ################\n'
printf '%s\n' "${rows[@]}"
if [ "${#failed[@]}" -ne 0 ]; then
    echo "FAILED step(s): ${failed[*]}"
    exit 1
fi
echo "every step succeeded: $*"
