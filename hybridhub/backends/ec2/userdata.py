"""The EC2 bootstrap: the user-data script that brings up ``jupyterhub-singleuser``.

:func:`render_script` turns a :class:`BootstrapSpec` into a bash script that
cloud-init runs as root on the instance's first boot (or every boot, wrapped by
:func:`render_user_data` for ``shutdown_action = "stop"``).  It

1. writes the server's environment (hub URL, API token, OAuth settings) to a
   root-only file; the token lives nowhere else on the instance and the script
   never prints it (no ``set -x``, no ``env`` dumps);
2. finds the Python of the newest Neuron PyTorch virtualenv on the Deep Learning
   AMI (or the configured one) and installs ``jupyterhub`` into it if missing;
3. creates the notebook user and brings the user's home in: an S3 prefix
   synced down at start, up every ``sync_interval`` seconds, on exit and on a
   spot interruption notice (``home_storage = "s3"``, the default), or an EFS
   file system mounted over NFS (``"efs"``);
4. starts the single-user server (under systemd when it is there, so cloud-init
   finishes and a shutdown stops the server cleanly);
5. watches the instance metadata for the two-minute spot interruption notice
   (IMDSv2) and, when it comes, syncs the home and stops the server.

Everything the script needs is baked in when it is rendered; nothing is read
from the environment, so the same text runs on EC2 and in the tests.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

HOME_STORAGE = ("s3", "efs", "none")
ENV_EOF = "HYBRIDHUB_SERVER_ENV_EOF"
#: Paths never copied to or from S3: caches and per-run files.
DEFAULT_SYNC_EXCLUDES = (
    ".cache/*",
    ".local/share/jupyter/runtime/*",
    ".ipython/profile_default/history.sqlite*",
)
#: The one distribution the script installs into the instance's Python: the Lab extension
#: (labextension/), never the hub's own wheel and its dependencies.
LAB_DISTRIBUTION = "hybridhub-lab"


def pip_spec_distribution(spec: str) -> str:
    """The normalised name of the distribution a pip requirement installs: a wheel's or
    sdist's file name (a path or URL), ``name @ url``, or ``name[extras]==version``."""
    spec = spec.strip()
    if "@" in spec.split("://", 1)[0]:
        spec = spec.split("@", 1)[0]
    last = spec.split("?", 1)[0].split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    if last.endswith(".whl"):
        spec = last.split("-", 1)[0]
    elif last.endswith((".tar.gz", ".zip")):
        spec = last.rsplit("-", 1)[0]
    name = re.match(r"[A-Za-z0-9._-]*", spec.strip()).group(0)
    return re.sub(r"[-_.]+", "-", name).lower()


def check_lab_spec(spec: str) -> str:
    """``spec`` if it installs the Lab distribution (or is empty), else :class:`ValueError`."""
    if spec and pip_spec_distribution(spec) != LAB_DISTRIBUTION:
        raise ValueError(
            f"the Lab extension's pip requirement must name the {LAB_DISTRIBUTION} distribution "
            f"(e.g. hybridhub_lab-0.1.0-py3-none-any.whl), not {spec!r}: instances get the Lab "
            "extension only, never the hub's wheel"
        )
    return spec
#: Where the Neuron DLAMI keeps its PyTorch virtualenvs (the newest is used).
NEURON_PYTHON_GLOB = "/opt/aws_neuronx_venv_pytorch_*/bin/python"


@dataclass(frozen=True)
class BootstrapSpec:
    """Everything the bootstrap script needs, decided by the hub at launch time."""

    env: dict[str, str]
    args: tuple[str, ...] = ()
    python: str = "auto"
    jupyterhub_spec: str = "jupyterhub"
    lab_spec: str = ""  # pip requirement of the hybridhub-lab distribution; "" = none
    unix_user: str = "jovyan"
    home_dir: str = "/home/jovyan"
    state_dir: str = "/var/lib/hybridhub"
    home_storage: str = "s3"
    s3_uri: str = ""
    s3_endpoint_url: str = ""
    sync_command: str = "aws"
    sync_interval: int = 300
    sync_excludes: tuple[str, ...] = DEFAULT_SYNC_EXCLUDES
    efs_target: str = ""
    efs_mount_options: str = (
        "nfsvers=4.1,rsize=1048576,wsize=1048576,hard,timeo=600,retrans=2,noresvport"
    )
    imds_url: str = "http://169.254.169.254"
    spot_watch: bool = True
    spot_poll_seconds: float = 5.0
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if self.home_storage not in HOME_STORAGE:
            raise ValueError(
                f"home_storage must be one of {HOME_STORAGE}, got {self.home_storage!r}"
            )
        if self.home_storage == "s3" and not self.s3_uri.startswith("s3://"):
            raise ValueError(f"home_storage 's3' needs an s3:// URI, got {self.s3_uri!r}")
        if self.home_storage == "efs" and not self.efs_target:
            raise ValueError("home_storage 'efs' needs an efs_target (host:/path)")
        check_lab_spec(self.lab_spec)
        for key, value in self.env.items():
            if not key.replace("_", "").isalnum() or key[0].isdigit():
                raise ValueError(f"invalid environment variable name {key!r}")
            if ENV_EOF in value:
                raise ValueError(f"environment value of {key} contains the here-document marker")


def _q(value: object) -> str:
    return shlex.quote(str(value))


def env_file_text(env: dict[str, str]) -> str:
    """The server's environment as ``export KEY='value'`` lines (sourced by bash)."""
    return "".join(f"export {k}={_q(v)}\n" for k, v in sorted(env.items()))


_BODY = r"""
log() { echo "hybridhub-bootstrap: $*" >&2; }

mkdir -p "$HH_STATE_DIR"
chmod 700 "$HH_STATE_DIR"

# Re-run under systemd (when present) so cloud-init can finish and a shutdown
# stops the server through the TERM trap below, with a final home sync.
if [ -z "${HH_FOREGROUND:-}" ] && [ -d /run/systemd/system ] \
        && command -v systemd-run >/dev/null; then
    install -m 700 "$0" "$HH_STATE_DIR/bootstrap.sh"
    systemctl stop hybridhub-singleuser.service 2>/dev/null || true
    systemctl reset-failed hybridhub-singleuser.service 2>/dev/null || true
    exec systemd-run --unit=hybridhub-singleuser --setenv=HH_FOREGROUND=1 \
        --property=KillMode=mixed --property=TimeoutStopSec=150 "$HH_STATE_DIR/bootstrap.sh"
fi

# --- Python with jupyterhub ------------------------------------------------------
if [ "$HH_PYTHON" = auto ]; then
    HH_PYTHON=$(ls -d $HH_PYTHON_GLOB 2>/dev/null | sort -V | tail -n 1 || true)
    [ -n "$HH_PYTHON" ] || HH_PYTHON=$(command -v python3)
fi
if ! "$HH_PYTHON" -c 'import jupyterhub.singleuser' 2>/dev/null; then
    log "installing $HH_JUPYTERHUB_SPEC into $HH_PYTHON"
    "$HH_PYTHON" -m pip install --quiet "$HH_JUPYTERHUB_SPEC" jupyterlab
fi
# the hybridhub Lab extension (status item, stop warnings): the hybridhub-lab distribution
# alone, which needs only jupyter_server (installed above), nothing of the hub side
if [ -n "$HH_LAB_SPEC" ] && ! "$HH_PYTHON" -c 'import hybridhub_lab' 2>/dev/null; then
    log "installing the hybridhub Lab extension into $HH_PYTHON"
    "$HH_PYTHON" -m pip install --quiet "$HH_LAB_SPEC" \
        || log "could not install $HH_LAB_SPEC; the server runs without the Lab extension"
fi

# --- user and home -----------------------------------------------------------------
RUN_AS=()
if [ -n "$HH_UNIX_USER" ] && [ "$(id -u)" = 0 ]; then
    id -u "$HH_UNIX_USER" >/dev/null 2>&1 \
        || useradd -m -d "$HH_HOME" -s /bin/bash -U "$HH_UNIX_USER"
    RUN_AS=(runuser -u "$HH_UNIX_USER" -m --)
fi
mkdir -p "$HH_HOME"

s3() {
    local extra=()
    [ -z "$HH_S3_ENDPOINT" ] || extra+=(--endpoint-url "$HH_S3_ENDPOINT")
    for pattern in "${HH_SYNC_EXCLUDES[@]}"; do extra+=(--exclude "$pattern"); done
    "$HH_SYNC_CMD" s3 sync --only-show-errors "${extra[@]}" "$@"
}
sync_up() {
    [ "$HH_HOME_STORAGE" = s3 ] || return 0
    s3 "$HH_HOME/" "$HH_S3_URI" && touch "$HH_STATE_DIR/synced-up" || log "home sync to S3 failed"
}
case "$HH_HOME_STORAGE" in
    s3)
        s3 "$HH_S3_URI" "$HH_HOME/" || { log "home sync from S3 failed"; exit 70; }
        touch "$HH_STATE_DIR/synced-down"
        ;;
    efs)
        if ! mountpoint -q "$HH_HOME"; then
            mount -t nfs4 -o "$HH_EFS_OPTIONS" "$HH_EFS_TARGET" "$HH_HOME" \
                || { log "EFS mount failed"; exit 70; }
        fi
        ;;
esac
[ ${#RUN_AS[@]} -eq 0 ] || chown -R "$HH_UNIX_USER:" "$HH_HOME" 2>/dev/null || true

# --- the server ----------------------------------------------------------------------
(
    set -a
    . "$HH_STATE_DIR/server.env"
    set +a
    export HOME="$HH_HOME" USER="${HH_UNIX_USER:-$(id -un)}" SHELL=/bin/bash
    cd "$HH_HOME"
    exec "${RUN_AS[@]}" "$HH_PYTHON" -m jupyterhub.singleuser "${HH_ARGS[@]}"
) &
SERVER_PID=$!
echo "$SERVER_PID" > "$HH_STATE_DIR/server.pid"
log "jupyterhub-singleuser started (pid $SERVER_PID)"

BACKGROUND=()
shutdown() {
    log "stopping the server"
    kill -TERM "$SERVER_PID" 2>/dev/null || true
}
trap shutdown TERM INT

if [ "$HH_HOME_STORAGE" = s3 ] && [ "$HH_SYNC_INTERVAL" -gt 0 ]; then
    ( trap - TERM INT; while sleep "$HH_SYNC_INTERVAL"; do sync_up; done ) &
    BACKGROUND+=($!)
fi

spot_watch() {
    trap - TERM INT
    while sleep "$HH_SPOT_POLL"; do
        token=$(curl -sf -m 2 -X PUT "$HH_IMDS/latest/api/token" \
            -H "X-aws-ec2-metadata-token-ttl-seconds: 300") || continue
        code=$(curl -s -m 2 -o "$HH_STATE_DIR/spot-notice" -w '%{http_code}' \
            -H "X-aws-ec2-metadata-token: $token" \
            "$HH_IMDS/latest/meta-data/spot/instance-action") || continue
        if [ "$code" = 200 ]; then
            log "spot interruption notice: $(cat "$HH_STATE_DIR/spot-notice")"
            sync_up
            kill -TERM "$SERVER_PID" 2>/dev/null || true
            return 0
        fi
        rm -f "$HH_STATE_DIR/spot-notice"
    done
}
if [ "$HH_SPOT_WATCH" = 1 ]; then
    spot_watch &
    BACKGROUND+=($!)
fi

status=0
while kill -0 "$SERVER_PID" 2>/dev/null; do
    wait "$SERVER_PID" && status=0 || status=$?
done
[ ${#BACKGROUND[@]} -eq 0 ] || kill "${BACKGROUND[@]}" 2>/dev/null || true
sync_up
log "server exited with status $status"
exit "$status"
"""


def render_script(spec: BootstrapSpec) -> str:
    """The bash bootstrap for ``spec`` (it contains the API token: handle as a secret)."""
    excludes = " ".join(_q(p) for p in spec.sync_excludes)
    args = " ".join(_q(a) for a in spec.args)
    settings = {
        "HH_STATE_DIR": spec.state_dir,
        "HH_HOME": spec.home_dir,
        "HH_UNIX_USER": spec.unix_user,
        "HH_PYTHON": spec.python,
        "HH_PYTHON_GLOB": NEURON_PYTHON_GLOB,
        "HH_JUPYTERHUB_SPEC": spec.jupyterhub_spec,
        "HH_LAB_SPEC": spec.lab_spec,
        "HH_HOME_STORAGE": spec.home_storage,
        "HH_S3_URI": spec.s3_uri,
        "HH_S3_ENDPOINT": spec.s3_endpoint_url,
        "HH_SYNC_CMD": spec.sync_command,
        "HH_SYNC_INTERVAL": int(spec.sync_interval),
        "HH_EFS_TARGET": spec.efs_target,
        "HH_EFS_OPTIONS": spec.efs_mount_options,
        "HH_IMDS": spec.imds_url.rstrip("/"),
        "HH_SPOT_WATCH": "1" if spec.spot_watch else "0",
        "HH_SPOT_POLL": spec.spot_poll_seconds,
    }
    lines = [
        "#!/bin/bash",
        "# hybridhub bootstrap: one jupyterhub-singleuser server (made by hybridhub.backends.ec2.userdata).",
        "# It holds the server's API token: never add `set -x`, never print server.env.",
        "set -euo pipefail",
        "umask 077",
    ]
    lines += [f"{k}={_q(v)}" for k, v in settings.items()]
    lines.append(f"HH_SYNC_EXCLUDES=({excludes})")
    lines.append(f"HH_ARGS=({args})")
    lines.append('mkdir -p "$HH_STATE_DIR"')
    lines.append(f"cat > \"$HH_STATE_DIR/server.env\" <<'{ENV_EOF}'")
    lines.append(env_file_text({**spec.env, **spec.extra}).rstrip("\n"))
    lines.append(ENV_EOF)
    lines.append('chmod 600 "$HH_STATE_DIR/server.env"')
    return "\n".join(lines) + "\n" + _BODY.lstrip("\n")


_EVERY_BOOT = """#cloud-config
# hybridhub: run the bootstrap on every boot (a stopped instance is started again
# with fresh user-data holding the new server token).
cloud_final_modules:
  - [scripts-user, always]
"""


def render_user_data(spec: BootstrapSpec, *, every_boot: bool = False) -> str:
    """The instance's user-data: the script, or a MIME multipart that runs it on every boot."""
    script = render_script(spec)
    if not every_boot:
        return script
    msg = MIMEMultipart()
    msg.attach(MIMEText(_EVERY_BOOT, "cloud-config"))
    part = MIMEText(script, "x-shellscript")
    part.add_header("Content-Disposition", 'attachment; filename="hybridhub-bootstrap.sh"')
    msg.attach(part)
    return msg.as_string()


def extract_script(user_data: str) -> str:
    """The shell script inside user-data from :func:`render_user_data` (as cloud-init reads it)."""
    if user_data.startswith("#!"):
        return user_data
    from email import message_from_string

    for part in message_from_string(user_data).walk():
        if part.get_content_type() == "text/x-shellscript":
            return part.get_payload(decode=True).decode()
    raise ValueError("no shell script in user-data")
