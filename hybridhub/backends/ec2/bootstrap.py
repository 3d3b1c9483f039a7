"""What runs on the instance: the bootstrap's settings and the user-data built from them."""

from __future__ import annotations

import jupyterhub
from traitlets import Enum, Float, HasTraits, Int, TraitError, Unicode, validate

from hybridhub.backends.ec2.userdata import BootstrapSpec, check_lab_spec, render_user_data
from hybridhub.errors import user_error


class Ec2Bootstrap(HasTraits):
    """The settings of the server on the instance, and :meth:`user_data` (part of ``Ec2Backend``)."""

    notebook_port = Int(8888, help="Port jupyterhub-singleuser listens on, on the instance.").tag(
        config=True
    )

    bind_ip = Unicode(
        "0.0.0.0", help="Address jupyterhub-singleuser binds to on the instance."
    ).tag(config=True)

    python_path = Unicode(
        "auto",
        help="Python that runs jupyterhub-singleuser on the instance; 'auto': the newest "
        "/opt/aws_neuronx_venv_pytorch_*/bin/python of the Neuron DLAMI, else python3.",
    ).tag(config=True)

    jupyterhub_pip_spec = Unicode(
        f"jupyterhub=={jupyterhub.__version__}",
        help="pip requirement installed on the instance when its Python lacks jupyterhub.",
    ).tag(config=True)

    lab_extension_pip_spec = Unicode(
        "",
        help="pip requirement of the hybridhub-lab distribution, the Lab extension alone (e.g. an "
        "https:// or s3-synced path to hybridhub_lab-0.1.0-py3-none-any.whl, or "
        "hybridhub-lab==0.1.0), installed on the instance so its JupyterLab shows the session and "
        "stop warnings (docs/lab.md); any other distribution, the hub's wheel included, is "
        "refused; empty: not installed.",
    ).tag(config=True)

    @validate("lab_extension_pip_spec")
    def _lab_distribution_only(self, proposal):
        try:
            return check_lab_spec(proposal["value"])
        except ValueError as e:
            raise TraitError(f"Ec2Backend.lab_extension_pip_spec: {e}") from None

    unix_user = Unicode(
        "jovyan",
        help="Unix user the server runs as on the instance (created if missing); empty: the "
        "user running the bootstrap.",
    ).tag(config=True)

    instance_home_dir = Unicode(
        "/home/jovyan",
        help="The user's home on the instance (the same path as in the notebook images of the "
        "other classes).",
    ).tag(config=True)

    bootstrap_state_dir = Unicode(
        "/var/lib/hybridhub",
        help="Root-only directory on the instance for the server's env file and bootstrap state.",
    ).tag(config=True)

    home_storage = Enum(
        ["s3", "efs", "none"],
        "s3",
        help="How the user's home reaches the instance: 's3' syncs home_s3_uri down at start and "
        "up periodically, at exit and on a spot notice; 'efs' mounts efs_target over NFS; "
        "'none' keeps it on the instance's root volume only.",
    ).tag(config=True)

    home_s3_uri = Unicode(
        "",
        help="S3 URI of a user's home, with {username} (e.g. s3://lab-homes/homes/{username}/).",
    ).tag(config=True)

    home_s3_endpoint_url = Unicode(
        "", help="S3 endpoint used by the instance's sync (tests, VPC endpoints); empty: AWS's."
    ).tag(config=True)

    home_sync_command = Unicode("aws", help="AWS CLI used on the instance for 'aws s3 sync'.").tag(
        config=True
    )

    home_sync_interval = Int(
        300, help="Seconds between home syncs up to S3 while the server runs (0: only at exit)."
    ).tag(config=True)

    efs_target = Unicode(
        "",
        help="NFS target for home_storage='efs', with {username} "
        "(e.g. fs-0123.efs.us-east-1.amazonaws.com:/homes/{username}).",
    ).tag(config=True)

    imds_url = Unicode(
        "http://169.254.169.254",
        help="Instance metadata service the bootstrap asks for spot notices (tests point it at a "
        "stand-in).",
    ).tag(config=True)

    instance_spot_poll_seconds = Float(
        5, help="Seconds between the bootstrap's checks of the spot interruption notice."
    ).tag(config=True)

    def server_env(self) -> dict[str, str]:
        """The server's environment: the hub's JUPYTERHUB_* settings, the hardware description."""
        self.ip = self.bind_ip
        self.port = self.notebook_port
        env = super().get_env()
        for key in (
            "PATH",
            "PYTHONPATH",
            "CONDA_ROOT",
            "CONDA_DEFAULT_ENV",
            "VIRTUAL_ENV",
            "LD_LIBRARY_PATH",
        ):
            env.pop(key, None)  # the hub's own paths mean nothing on the instance
        env.update(self.accelerator_env())
        if self.offering is not None:
            env["HYBRIDHUB_INSTANCE_TYPE"] = self.fields.instance_type
        return env

    def bootstrap_spec(self) -> BootstrapSpec:
        """What the user-data script will do for this server."""
        username = self.user.name
        return BootstrapSpec(
            env=self.server_env(),
            args=tuple(self.get_args()),
            python=self.python_path,
            jupyterhub_spec=self.jupyterhub_pip_spec,
            lab_spec=self.lab_extension_pip_spec,
            unix_user=self.unix_user,
            home_dir=self.instance_home_dir,
            state_dir=self.bootstrap_state_dir,
            home_storage=self.home_storage,
            s3_uri=self.home_s3_uri.format(username=username) if self.home_storage == "s3" else "",
            s3_endpoint_url=self.home_s3_endpoint_url,
            sync_command=self.home_sync_command,
            sync_interval=self.home_sync_interval,
            efs_target=self.efs_target.format(username=username)
            if self.home_storage == "efs"
            else "",
            imds_url=self.imds_url,
            spot_watch=bool(self.offering is not None and self.fields.spot),
            spot_poll_seconds=self.instance_spot_poll_seconds,
        )

    def user_data(self) -> str:
        """The instance's user-data (contains the server's API token)."""
        try:
            spec = self.bootstrap_spec()
        except ValueError as e:
            self.log.error("Ec2Backend configuration: %s", e)
            raise user_error(
                503,
                "The AWS class is misconfigured (home storage). "
                "Please tell the hub's administrators.",
            ) from None
        return render_user_data(spec, every_boot=self.shutdown_action == "stop")

