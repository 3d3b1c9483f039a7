"""Where a running server's SSH key waits for its stop, so the home comes back after a hub restart.

A launch's private key (:class:`~hybridhub.backends.theta.ssh.LaunchKey`) is needed once more at stop, to
copy the home back from the node.  In memory only, a hub restart between start and stop loses the node's
changes to the home.  With ``c.ThetaBackend.key_dir`` set, the key is kept in that folder on the hub's
machine, as the hub keeps its cookie secret: the folder is the hub account's alone (0700, never a link),
each key file 0600, named by the deployment (no secret), written once and deleted with the deployment.
It never leaves the hub: not in the spawner's state, a log line, a page, an error or Theta's API.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from hybridhub.backends.theta.ssh import LaunchKey


class KeyStore:
    """Private keys of running launches, one 0600 file each in a 0700 folder of the hub's account."""

    def __init__(self, folder: str | os.PathLike[str]):
        self.folder = Path(folder)

    def _path(self, deployment_name: str) -> Path:
        if not deployment_name.isalnum():  # launch_name(): letters and digits only
            raise ValueError(f"not a deployment name of this hub: {deployment_name!r}")
        return self.folder / f"{deployment_name}.key"

    def _check_folder(self) -> None:
        """Make the folder (0700), refusing a link or a folder another account can read or owns."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(self.folder)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise ValueError(f"c.ThetaBackend.key_dir {self.folder} must be a folder of the hub's own account")
        if stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(self.folder, 0o700)

    def keep(self, deployment_name: str, key: LaunchKey) -> None:
        """Write ``key`` for ``deployment_name`` (0600, never over an existing file or through a link)."""
        self._check_folder()
        fd = os.open(self._path(deployment_name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.export_private())

    def get(self, deployment_name: str) -> LaunchKey | None:
        """The key kept for ``deployment_name``, or None."""
        try:
            fd = os.open(self._path(deployment_name), os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb") as f:
            return LaunchKey.from_private(f.read())

    def drop(self, deployment_name: str) -> None:
        """Delete the key kept for ``deployment_name`` (none: nothing to do)."""
        self._path(deployment_name).unlink(missing_ok=True)
