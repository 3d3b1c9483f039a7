"""Trust levels and what a server on untrusted hardware receives.

Trust is configuration at two levels:

- per class and offering: the catalog's ``trust`` (community ``untrusted``; enterprise
  and AWS ``trusted`` by default);
- per host: a docker inventory host labelled ``trust: untrusted`` (``GpuInventory.hosts``
  ``labels``) makes every offering that may be placed on it untrusted, since the
  placement is only known at start.  A label can lower trust, never raise it.

A server on untrusted hardware gets (:func:`confine_backend`):

- only its own server token, with the hub's default per-server scopes (the ``server``
  role: post activity, be accessed), whatever ``server_token_scopes`` says for trusted
  hardware (:func:`clamp_server_token`);
- an environment without cloud credentials or hybridhub secrets (:func:`filter_env`);
- none of the folders its user's groups mark confidential: an empty read-only folder
  stands in each place (``local``: :mod:`hybridhub.backends.local.confine`; ``docker``: a read-only tmpfs
  mount).  The user is told in the spawn progress, in ``HYBRIDHUB_NOT_MOUNTED`` and on
  "My sessions".  A backend that cannot leave folders out refuses to start.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hybridhub.backends.base import BackendMixin
from hybridhub.catalog import TRUST_LEVELS
from hybridhub.errors import ConfinementError

if TYPE_CHECKING:
    from hybridhub.catalog import Offering

TRUSTED, UNTRUSTED = TRUST_LEVELS

#: Environment names never given to untrusted hardware (shell-style patterns).
DEFAULT_ENV_DENY = (
    "AWS_*", "HYBRIDHUB_*", "BOTO_*", "AZURE_*", "GOOGLE_APPLICATION_CREDENTIALS",
    "*_SECRET*", "*PASSWORD*", "PG*", "DATABASE_URL",
)
#: Names allowed even though a deny pattern matches: they describe the hardware only.
DEFAULT_ENV_ALLOW = (
    "HYBRIDHUB_CLASS", "HYBRIDHUB_MODEL", "HYBRIDHUB_COUNT", "HYBRIDHUB_GROUP",
    "HYBRIDHUB_HOST", "HYBRIDHUB_GPUS", "HYBRIDHUB_TRUST", "HYBRIDHUB_NOT_MOUNTED",
    "HYBRIDHUB_PORTAL_URL",  # where the Lab extension reads the session (a URL, no secret)
    "HYBRIDHUB_UTILISATION_SOURCE", "HYBRIDHUB_UTILISATION_INTERVAL",  # how it samples its accelerators
)
#: Plain words shown in the picker for each trust level.
DEFAULT_TRUST_WORDS = {
    TRUSTED: "Trusted: run by the university or its cloud account",
    UNTRUSTED: "Untrusted: run by volunteers outside the university",
}


def least_trusted(*levels: str | None) -> str:
    """``untrusted`` if any level is (or is not a known level), else ``trusted``."""
    for level in levels:
        if level is not None and level != TRUSTED:
            return UNTRUSTED
    return TRUSTED


def host_trust(labels: Mapping[str, str] | None) -> str | None:
    """A host's own trust from its inventory ``labels`` (None: not labelled).

    An unknown value counts as ``untrusted``, so a typo never widens trust.
    """
    value = (labels or {}).get("trust")
    if value is None:
        return None
    return value if value in TRUST_LEVELS else UNTRUSTED


def offering_trust(offering: Offering, host_labels: Iterable[Mapping[str, str] | None] = ()) -> str:
    """The trust of ``offering``: its catalog level, lowered by any host it may land on
    (``host_labels``: each such host's inventory labels, from its backend's ``host_labels``)."""
    level = offering.trust
    for labels in host_labels:
        level = least_trusted(level, host_trust(labels))
    return level


@dataclass(frozen=True)
class HiddenDir:
    """A confidential folder (home-relative) and the groups that marked it."""

    path: str
    groups: tuple[str, ...]


@dataclass(frozen=True)
class Confinement:
    """What a launch must leave out: its trust level and the folders not mounted."""

    trust: str
    hidden: tuple[HiddenDir, ...] = ()

    @property
    def untrusted(self) -> bool:
        """Whether the server runs on untrusted hardware."""
        return self.trust != TRUSTED

    @property
    def hidden_paths(self) -> list[str]:
        """The home-relative folders left out."""
        return [h.path for h in self.hidden]

    def env_value(self) -> str:
        """``HYBRIDHUB_NOT_MOUNTED``: ``path (confidential to g1, g2)`` joined by ``; ``."""
        return "; ".join(f"{h.path} (confidential to {', '.join(h.groups)})" for h in self.hidden)

    def notice(self) -> str | None:
        """The sentence the user reads on the spawn page, or None when nothing is left out."""
        if not self.hidden:
            return None
        return (
            "Not mounted on this untrusted hardware: "
            + ", ".join(f"~/{h.path} (confidential to {', '.join(h.groups)})" for h in self.hidden)
            + ". Use a trusted offering to work with these folders."
        )


def hidden_dirs(confidential: Mapping[str, Iterable[str]]) -> tuple[HiddenDir, ...]:
    """Merge groups' confidential folders: one entry per folder, nested ones dropped."""
    by_path: dict[str, set[str]] = {}
    for group, paths in confidential.items():
        for p in paths:
            by_path.setdefault(p, set()).add(group)
    paths = sorted(by_path)
    keep = [p for p in paths if not any(p.startswith(q + "/") for q in paths if q != p)]
    return tuple(HiddenDir(p, tuple(sorted(by_path[p]))) for p in keep)


def filter_env(
    env: Mapping[str, str],
    deny: Iterable[str] = DEFAULT_ENV_DENY,
    allow: Iterable[str] = DEFAULT_ENV_ALLOW,
) -> dict[str, str]:
    """``env`` without names matching a ``deny`` pattern, unless listed in ``allow``.

    The server's own ``JUPYTERHUB_*`` variables (its token among them) are never removed.
    """
    deny, allow = tuple(deny), set(allow)
    return {
        k: v
        for k, v in env.items()
        if k in allow
        or k.startswith(("JUPYTERHUB_", "JPY_"))
        or not any(fnmatch.fnmatchcase(k, pat) for pat in deny)
    }


def default_server_scopes(db: Any, username: str, server_name: str) -> list[str]:
    """The hub's default per-server token scopes (its ``server`` role), resolved for one server."""
    from jupyterhub import orm

    role = orm.Role.find(db, "server")
    scopes = list(role.scopes) if role is not None else ["users:activity!user", "access:servers!server"]
    return sorted(
        s + f"={username}/{server_name}" if s.endswith("!server") else s for s in scopes
    )


def clamp_server_token(spawner: Any) -> list[str] | None:
    """Cut the server's token down to :func:`default_server_scopes`; returns the scopes.

    The hub creates the token before the offering is known, with the configured
    ``server_token_scopes``; for untrusted hardware anything beyond the default is
    removed here, before the token leaves the hub.  None when there is no hub database.
    """
    db = getattr(getattr(spawner, "user", None), "db", None)
    token = getattr(spawner, "api_token", None)
    if db is None or not token:
        return None
    from jupyterhub import orm

    orm_token = orm.APIToken.find(db, token)
    if orm_token is None:
        return None
    scopes = default_server_scopes(db, spawner.user.name, spawner.name)
    if sorted(orm_token.scopes) != scopes:
        spawner.log.info(
            "Untrusted hardware: server token of %s limited to %s (was %s)",
            spawner._log_name, scopes, sorted(orm_token.scopes),
        )
        orm_token.scopes = scopes
        db.commit()
    return scopes


def confine_backend(
    child: Any,
    confinement: Confinement,
    *,
    env_deny: Iterable[str] = DEFAULT_ENV_DENY,
    env_allow: Iterable[str] = DEFAULT_ENV_ALLOW,
) -> None:
    """Prepare a backend child for untrusted hardware (a no-op on trusted hardware).

    Filters its environment, leaves the confidential folders out, and tells the server
    its trust level and what is missing.  Raises :class:`ConfinementError` when folders
    must be left out but the backend cannot do it.
    """
    if not confinement.untrusted:
        return
    if confinement.hidden:
        if not isinstance(child, BackendMixin):
            raise ConfinementError(
                f"the {type(child).__name__} backend cannot leave confidential folders out"
            )
        child.hide_paths(confinement.hidden_paths)
    base_get_env = child.get_env
    deny, allow = tuple(env_deny), tuple(env_allow)

    def get_env() -> dict[str, str]:
        env = filter_env(base_get_env(), deny, allow)
        env["HYBRIDHUB_TRUST"] = confinement.trust
        if confinement.hidden:
            env["HYBRIDHUB_NOT_MOUNTED"] = confinement.env_value()
        return env

    child.get_env = get_env


class BarredFromUntrusted(Exception):
    """The charged group may not use untrusted hardware; ``user_message`` says so."""

    def __init__(self, group: str, offering_label: str, words: str):
        self.group = group
        self.user_message = (
            f"Group {group!r} is barred from untrusted hardware by an administrator, and "
            f"{offering_label} is untrusted ({words}). Choose a trusted offering, or charge "
            "the launch to another of your groups."
        )
        super().__init__(self.user_message)


def plan_confinement(
    *,
    trust: str,
    charged_group: str,
    barred: Mapping[str, bool],
    confidential: Mapping[str, Iterable[str]],
    offering_label: str,
    words: str = DEFAULT_TRUST_WORDS[UNTRUSTED],
) -> Confinement:
    """The :class:`Confinement` of a launch, or :class:`BarredFromUntrusted`.

    ``barred`` and ``confidential`` hold the settings of the user's groups.  The bar is
    the charged group's; the confidential folders are those of *all* the user's groups,
    since one home holds the work of every group the user is in.
    """
    if trust == TRUSTED:
        return Confinement(TRUSTED)
    if barred.get(charged_group):
        raise BarredFromUntrusted(charged_group, offering_label, words)
    return Confinement(UNTRUSTED, hidden_dirs(confidential))
