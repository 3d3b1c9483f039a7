#!/usr/bin/env bash
# Install what hybridhub needs on a fresh Debian machine (idempotent).
#   scripts/setup.sh          the demo: Python venv with hybridhub, configurable-http-proxy
#   scripts/setup.sh --test   also the test tools: Docker Engine, Chromium, moto, Playwright
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

apt_install() {
    local missing=()
    for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: please install Debian packages: ${missing[*]}" >&2
        return 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

command -v npm >/dev/null || apt_install nodejs npm
command -v configurable-http-proxy >/dev/null || npm install -g --silent configurable-http-proxy

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
# The JupyterLab extension (labextension/) is built from source before pip installs the
# package, which ships the result in share/jupyter/labextensions/hybridhub-lab.
.venv/bin/pip install -q "jupyter_builder>=1.3,<2"
(
    cd labextension
    export YARN_GLOBAL_FOLDER="$PWD/.yarn/berry" PATH="$PWD/../.venv/bin:$PATH"
    # Node trusts only its own CA list; let it trust the system's too (as npm's cafile does),
    # so a bare shell (env -i) reaches a registry behind a site's TLS proxy.
    if [ -z "${NODE_EXTRA_CA_CERTS:-}" ] && [ -f /etc/ssl/certs/ca-certificates.crt ]; then
        export NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
    fi
    jlpm install >/dev/null
    jlpm build:prod >/dev/null
)
if [ "$want_test" = 1 ]; then
    apt_install docker.io chromium
    .venv/bin/pip install -q -e '.[test]'
    # PostgreSQL: the machines run it at 127.0.0.1:5432; start the cluster if it is down
    if ! (echo > /dev/tcp/127.0.0.1/5432) 2>/dev/null && command -v pg_ctlcluster >/dev/null; then
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
    fi
else
    .venv/bin/pip install -q -e .
fi
# An editable install copies no data-files: link the built Lab extension and enable the
# server extension in the venv, as the wheel's share/ and etc/ would.
mkdir -p .venv/share/jupyter/labextensions .venv/etc/jupyter/jupyter_server_config.d
ln -sfn "$PWD/hybridhub_lab/labextension" .venv/share/jupyter/labextensions/hybridhub-lab
cp labextension/jupyter-config/hybridhub_lab.json .venv/etc/jupyter/jupyter_server_config.d/
