#!/usr/bin/env bash
# Install everything and run the whole test suite (extra arguments go to pytest).
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
exec .venv/bin/pytest -p no:cacheprovider "$@"
