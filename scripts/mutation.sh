#!/usr/bin/env bash
# Mutation testing of the core modules with mutmut (issue 19 item 4; configured under [tool.mutmut] in
# pyproject.toml). Not in CI: it takes about an hour on two busy cores. Prints the score per module at the end.
#
#   scripts/mutation.sh            run (or continue) and score; mutmut keeps results in mutants/ between runs
#   scripts/mutation.sh --fresh    start from scratch (deletes mutants/)
#
# Timeouts are neither kills nor survivors: they are rerun once here, and any left are shown as "timeout".
# Survivors judged equivalent are listed, with the reason, in scripts/mutation_equivalent.tsv.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export PYTHONPATH=$PWD OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
if [[ "${1:-}" == "--fresh" ]]; then
    rm -rf mutants
    shift
fi
children=${MUTMUT_CHILDREN:-1}
nice -n 5 "$PY" -m mutmut run --max-children "$children" "$@"
mapfile -t again < <("$PY" scripts/mutation_score.py --names timeout)
if ((${#again[@]})); then
    echo "rerunning ${#again[@]} timed-out mutants once"
    nice -n 5 "$PY" -m mutmut run --max-children "$children" "${again[@]}"
fi
"$PY" scripts/mutation_score.py --survivors
