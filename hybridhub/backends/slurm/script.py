"""The job script: a pure function of plain data (:func:`sbatch_script`), tested without Slurm."""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass, field

from hybridhub.errors import user_error


@dataclass(frozen=True)
class JobSpec:
    """Everything :func:`sbatch_script` needs; plain data, no Slurm."""

    job_name: str
    comment: str
    gres: str
    count: int
    hours: float
    command: list[str]
    env_names: tuple[str, ...]
    workdir: str
    output: str
    partition: str | None = None
    cpus: int | None = None
    mem: str | None = None
    extra_directives: tuple[str, ...] = field(default_factory=tuple)
    login_environment: bool = False
    #: The hub user and server names the paths and tags were built from (checked when given).
    user: str | None = None
    server: str = ""


def slurm_time(hours: float) -> str:
    """``--time`` as ``D-HH:MM:SS``, rounded up to the whole minute."""
    minutes = max(1, math.ceil(round(hours * 60, 6)))
    days, rest = divmod(minutes, 24 * 60)
    return f"{days}-{rest // 60:02d}:{rest % 60:02d}:00"


def safe_tag(value: str) -> str:
    """``value`` with everything but letters, digits and ``._@-`` replaced (names, comments)."""
    return re.sub(r"[^A-Za-z0-9._@-]", "_", value)[:100]


#: A user or server name that may go into the job's paths and tags as it is.
SLURM_NAME = re.compile(r"[A-Za-z0-9_@+][A-Za-z0-9._@+-]{0,63}")
#: sbatch starts a heterogeneous job's next component at an ``#SBATCH`` line holding either word.
_HETJOB = re.compile("packjob|hetjob", re.IGNORECASE)
#: One ``#SBATCH`` argument: an option, and its value in printable ASCII without a space.
_DIRECTIVE = re.compile(r"--?[A-Za-z][A-Za-z0-9-]*(=[!-~]*)?")
#: Characters sbatch's parser reads specially (quotes, escapes, comments).
_SPECIAL = frozenset("\"'\\#")
_PATH = re.compile(r"/[A-Za-z0-9._@+/%-]*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


_HETJOB_WHY = "Slurm reads 'hetjob' and 'packjob' in a job script as job separators"


def _refusal(what: str, name: str, why: str):
    shown = name if len(name) <= 80 else name[:80] + "..."
    return user_error(400, f"{what} {shown!r} cannot be used on the Slurm cluster: {why}.")


def check_slurm_name(what: str, name: str) -> None:
    """Refuse (400, shown to the user) a user name the job's paths cannot carry as it is."""
    if not SLURM_NAME.fullmatch(name):
        raise _refusal(what, name, "only 1 to 64 letters, digits and . _ @ + - are allowed, "
                                   "not starting with . or -")
    if _HETJOB.search(name):
        raise _refusal(what, name, _HETJOB_WHY)


def _check_directive(directive: str) -> None:
    if not _DIRECTIVE.fullmatch(directive) or _SPECIAL & set(directive) or _HETJOB.search(directive):
        raise ValueError(
            f"#SBATCH {directive!r} cannot be used: one option in printable ASCII without spaces, "
            "quotes, '\\', '#', 'hetjob' or 'packjob'"
        )


def _check_path(option: str, path: str) -> None:
    parts = path.split("/")
    if (
        not _PATH.fullmatch(path)
        or "." in parts
        or ".." in parts
        or option != "output" and "%" in path
        or _HETJOB.search(path)
    ):
        raise ValueError(
            f"--{option} path {path!r} cannot be used: it must be absolute, of letters, digits and "
            f"._@+-/{'%' if option == 'output' else ''} only, without . or .. parts"
        )


def sbatch_script(spec: JobSpec) -> str:
    """The batch script for ``spec`` (the server's environment values are not in it).

    No value can change which options sbatch reads.  sbatch splits an ``#SBATCH`` line's rest at
    whitespace, takes quotes and ``\\`` specially, ends it at a ``#`` and starts a heterogeneous job's
    next component at a line holding ``hetjob`` or ``packjob``; so nothing is quoted there, every
    value is checked instead:

    * the user name (``spec.user``; the paths and tags are built from it) must match
      :data:`SLURM_NAME` (letters, digits, ``._@+-``, not starting with ``.`` or ``-``, at most 64)
      and hold neither word, the server name (``spec.server``, in the tags through :func:`safe_tag`)
      neither word; otherwise a 400 naming the field reaches the user;
    * ``--chdir`` and ``--output`` must be absolute paths of those characters and ``/`` (``%`` for
      sbatch's patterns in ``--output`` only, which user names cannot hold), without ``.``/``..`` parts;
    * every directive (the site's ``extra_directives`` too) must be one option in printable ASCII
      without spaces, quotes, ``\\`` or ``#``; ``--export`` names must be variable names;
    * the command is the only script text after the directives: each word ``shlex.quote``-d, none
      holding a newline (a line of its own) or NUL.

    A value failing the last three comes from the site's configuration: :class:`ValueError`.
    """
    if spec.user is not None:
        check_slurm_name("user name", spec.user)
    if _HETJOB.search(spec.server):  # the server name reaches the tags only, through safe_tag
        raise _refusal("server name", spec.server, _HETJOB_WHY)
    if spec.count < 1:
        raise ValueError(f"GRES count must be >= 1, got {spec.count}")
    _check_path("chdir", spec.workdir)
    _check_path("output", spec.output)
    directives = _directives(spec)
    for word in spec.command:
        if "\n" in word or "\0" in word:
            raise ValueError(f"command word {word!r} cannot be used in the job script: a newline or NUL")
    lines = ["#!/bin/bash", *(f"#SBATCH {d}" for d in directives), "set -eu"]
    lines.append("exec " + " ".join(shlex.quote(a) for a in spec.command))
    return "\n".join(lines) + "\n"


def _directives(spec: JobSpec) -> list[str]:
    """The ``#SBATCH`` options of ``spec``, each checked to be one option sbatch reads as it is."""
    directives = [
        f"--job-name={spec.job_name}",
        f"--comment={spec.comment}",
        f"--gres={spec.gres}:{spec.count}",
        f"--time={slurm_time(spec.hours)}",
        "--nodes=1",
        "--ntasks=1",
        "--no-requeue",
        f"--chdir={spec.workdir}",
        f"--output={spec.output}",
    ]
    if spec.login_environment:  # slurmd loads the login env, then sbatch's named variables
        for name in spec.env_names:
            if not _ENV_NAME.fullmatch(name):
                raise ValueError(f"variable name {name!r} cannot be used in --export")
        directives += [f"--export={','.join(spec.env_names) or 'NONE'}", "--get-user-env"]
    else:  # sbatch's own (clean) environment is the job's, exactly
        directives.append("--export=ALL")
    if spec.partition:
        directives.append(f"--partition={spec.partition}")
    if spec.cpus:
        directives.append(f"--cpus-per-task={spec.cpus}")
    if spec.mem:
        directives.append(f"--mem={spec.mem}")
    directives.extend(spec.extra_directives)
    for d in directives:
        _check_directive(d)
    return directives
