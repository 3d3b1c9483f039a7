#!/usr/bin/env bash
# Install everything and run the whole test suite (extra arguments go to pytest), on HYBRIDHUB_TEST_WORKERS
# pytest-xdist workers (default 2; 0 runs it in this process). tests/conftest.py says which tests share one.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
if [ -x scripts/docker-engines.sh ]; then
    scripts/docker-engines.sh start
fi
if [ -x scripts/slurm.sh ]; then
    scripts/slurm.sh start
fi
export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/pytest -p no:cacheprovider -n "${HYBRIDHUB_TEST_WORKERS:-2}" --dist loadgroup "$@"
