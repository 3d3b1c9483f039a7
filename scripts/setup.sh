#!/usr/bin/env bash
# Install what hybridhub needs on a fresh Debian machine (idempotent).
#   scripts/setup.sh          the demo: Python venv with hybridhub, configurable-http-proxy
#   scripts/setup.sh --test   also the test tools: Docker Engine, Chromium, Prometheus, moto, Playwright
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
# The JupyterLab extension (labextension/, its own distribution hybridhub-lab) is built from
# source before pip installs it; the editable install's build hook (hatch-jupyter-builder,
# labextension/pyproject.toml) then finds it up to date.  Its wheel (pip wheel labextension)
# always builds it afresh into share/jupyter/labextensions.
.venv/bin/pip install -q "jupyter_builder>=1.3,<2"
export YARN_GLOBAL_FOLDER="$PWD/labextension/.yarn/berry"
# Node trusts only its own CA list; let it trust the system's too (as npm's cafile does),
# so a bare shell (env -i) reaches a registry behind a site's TLS proxy.
if [ -z "${NODE_EXTRA_CA_CERTS:-}" ] && [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    export NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
fi
(
    cd labextension
    export PATH="$PWD/../.venv/bin:$PATH"
    jlpm install >/dev/null
    jlpm build:prod >/dev/null
)
# The venv's Lab extension is a link to the build (below); remove it before pip (un)installs the
# editable wheel's copy of share/, so pip never writes or deletes files through it.
labext=.venv/share/jupyter/labextensions/hybridhub-lab
if [ -L "$labext" ]; then rm "$labext"; fi
if [ "$want_test" = 1 ]; then
    apt_install docker.io chromium prometheus  # prometheus: promtool and a Prometheus for tests/test_prometheus.py
    apt_install openssh-server  # sshd in the Theta test controller's GPU Nodes (tests/fixtures/theta.py)
    .venv/bin/pip install -q -e ./labextension -e '.[test]'  # hybridhub requires hybridhub-lab
    # PostgreSQL: the machines run it at 127.0.0.1:5432; start the cluster if it is down
    if ! (echo > /dev/tcp/127.0.0.1/5432) 2>/dev/null && command -v pg_ctlcluster >/dev/null; then
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
    fi
else
    .venv/bin/pip install -q -e ./labextension -e .
fi
# The editable install copied the built Lab extension and the server extension's config into the
# venv (the wheel's share/ and etc/); link the extension instead, so a rebuild (jlpm build:prod
# in labextension/) shows in Lab without reinstalling.
mkdir -p .venv/share/jupyter/labextensions .venv/etc/jupyter/jupyter_server_config.d
rm -rf "$labext"
ln -s "$PWD/labextension/hybridhub_lab/labextension" "$labext"
cp labextension/jupyter-config/hybridhub_lab.json .venv/etc/jupyter/jupyter_server_config.d/
mkdir -p .venv/share/jupyter/lab/settings/overrides.d  # Lab's defaults for hub users (no news prompt)
cp labextension/jupyter-config/hybridhub_lab_settings.json .venv/share/jupyter/lab/settings/overrides.d/hybridhub_lab.json
