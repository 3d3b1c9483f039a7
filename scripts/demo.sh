#!/usr/bin/env bash
# Start the demo hub at http://127.0.0.1:8000 (SQLite, local backend, demo users).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/jupyterhub -f jupyterhub_config.py "$@"
