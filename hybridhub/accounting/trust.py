"""Per-group trust policy: barred from untrusted hardware, and confidential folders.

An administrator sets both on a group (:class:`hybridhub.accounting.models.Group`):

- ``barred_untrusted``: launches charged to the group may not run on untrusted
  hardware (the spawner refuses them with a 403 naming the reason);
- ``confidential_dirs``: folders of the home (relative paths) that are never mounted
  on untrusted hardware for any member of the group.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import bindparam, select, update

from hybridhub.accounting.budgets import AuditHook, BudgetChange
from hybridhub.accounting.db import Database, unchanged
from hybridhub.accounting.models import Group

MAX_CONFIDENTIAL_DIRS = 64

#: Built once (each picker view asks it): the policy columns of the named groups.
_POLICIES_OF = select(Group.name, Group.barred_untrusted, Group.confidential_dirs).where(
    Group.name.in_(bindparam("names", expanding=True)))


class PolicyError(ValueError):
    """A policy value is invalid; ``field`` names it."""

    def __init__(self, field: str, problem: str):
        self.field = field
        super().__init__(f"{field}: {problem}")


@dataclass(frozen=True)
class GroupPolicy:
    """One group's trust settings."""

    group: str
    barred_untrusted: bool
    confidential_dirs: tuple[str, ...]


def normalize_confidential_dir(path: str) -> str:
    """A home-relative folder path in canonical form (``data/secret``), or :class:`PolicyError`.

    Leading ``~/`` or ``./`` is dropped; absolute paths, ``..``, empty paths and the
    home itself are refused (the home itself cannot be left out: the server needs it).
    """
    if not isinstance(path, str):
        raise PolicyError("confidential_dirs", f"must be a string, got {path!r}")
    text = path.strip()
    if text.startswith("~/"):
        text = text[2:]
    if text.startswith("/"):
        raise PolicyError("confidential_dirs", f"{path!r}: give a path relative to the home")
    if any(part == ".." for part in text.split("/")):
        raise PolicyError("confidential_dirs", f"{path!r}: '..' is not allowed")
    if any(c in text for c in "\0\n\r"):
        raise PolicyError("confidential_dirs", f"{path!r}: control characters are not allowed")
    norm = posixpath.normpath(text) if text else ""
    if norm in ("", "."):
        raise PolicyError("confidential_dirs", f"{path!r}: name a folder inside the home")
    return norm


def normalize_confidential_dirs(paths: Iterable[str]) -> list[str]:
    """Normalise, de-duplicate and sort; a folder inside another listed one is dropped."""
    if isinstance(paths, str):
        raise PolicyError("confidential_dirs", "must be a list of folder paths")
    norm = sorted({normalize_confidential_dir(p) for p in paths})
    if len(norm) > MAX_CONFIDENTIAL_DIRS:
        raise PolicyError("confidential_dirs", f"at most {MAX_CONFIDENTIAL_DIRS} folders")
    return [p for p in norm if not any(p.startswith(q + "/") for q in norm if q != p)]


class TrustPolicy:
    """Read and change groups' trust settings in the accounting database."""

    def __init__(self, db: Database):
        self.db = db

    def for_groups(self, names: Iterable[str]) -> dict[str, GroupPolicy]:
        """The policy of each named group that exists (unknown groups are left out)."""
        names = sorted(set(names))
        if not names:
            return {}
        with self.db.session() as s:
            rows = unchanged(s, ("trust policies of", *names), lambda: s.execute(_POLICIES_OF, {"names": names}).all())
        return {
            name: GroupPolicy(name, bool(barred), tuple(dirs or ()))
            for name, barred, dirs in rows
        }

    def all(self) -> list[GroupPolicy]:
        """Every group's policy, by name."""
        with self.db.session() as s:
            rows = s.execute(
                select(Group.name, Group.barred_untrusted, Group.confidential_dirs).order_by(
                    Group.name
                )
            ).all()
        return [GroupPolicy(n, bool(b), tuple(d or ())) for n, b, d in rows]

    def set_policy(
        self,
        group: str,
        *,
        barred_untrusted: bool | None = None,
        confidential_dirs: Iterable[str] | None = None,
        actor: str = "",
        audit: AuditHook | None = None,
    ) -> GroupPolicy:
        """Change a group's settings (``None`` leaves one as it is); KeyError if no such group.

        With ``audit`` (e.g. :func:`hybridhub.accounting.audit.record`) the change is logged, by
        ``actor``, in the same transaction.
        """
        values: dict = {}
        if barred_untrusted is not None:
            if not isinstance(barred_untrusted, bool):
                raise PolicyError("barred_untrusted", f"must be true or false, got {barred_untrusted!r}")
            values["barred_untrusted"] = barred_untrusted
        if confidential_dirs is not None:
            values["confidential_dirs"] = normalize_confidential_dirs(confidential_dirs)
        with self.db.session() as s:
            row = s.execute(
                select(Group.barred_untrusted, Group.confidential_dirs).where(Group.name == group)
            ).first()
            if row is None:
                raise KeyError(group)
            before = {"barred_untrusted": bool(row[0]), "confidential_dirs": list(row[1] or [])}
            after = {**before, **values}
            if values:
                s.execute(update(Group).where(Group.name == group).values(**values))
                if audit is not None and after != before:
                    audit(s, BudgetChange(None, group, "set trust policy", actor or "?", before, after))
        return GroupPolicy(group, after["barred_untrusted"], tuple(after["confidential_dirs"]))
