"""User names cannot add or change ``#SBATCH`` options (issue "Safe wherever it is installed", finding 5).

User names come from identity providers.  The job script carries the name in ``--chdir`` and
``--output`` (and, as a tag, in ``--job-name`` and ``--comment``): a name that ``sbatch`` would split
into more options, cut at a ``#``, or read as a heterogeneous-job separator must be refused, and every
other name must give exactly the intended options.  :func:`sbatch_options` reads a script the way
Slurm 22.05's ``sbatch`` does (``_opt_batch_script``/``_get_argument`` in ``src/sbatch/opt.c``), erring
on the side of splitting more: lines also end at Python's ``splitlines()`` separators, and every
Unicode space separates arguments.
"""

from __future__ import annotations

import functools
import re
import shlex

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tornado import web
from traitlets.config import Config

from hybridhub.backends.slurm import JobSpec, SlurmBackend, safe_tag, sbatch_script
from hybridhub.catalog import load_catalog

#: Stands for a heterogeneous-job separator: sbatch starts the job's next component at any
#: ``#SBATCH`` line containing ``packjob`` or ``hetjob`` (case-insensitive, anywhere in the line).
HETJOB = ("<hetjob: the next component starts here>", None)
#: Stands for an argument sbatch cannot read (unmatched quote, ``:`` starting an argument): sbatch exits.
FATAL = ("<fatal: sbatch refuses the script>", None)


def _arguments(rest: str) -> list[str] | None:
    """The arguments of one ``#SBATCH`` line's rest, as ``_get_argument`` splits them; None: fatal."""
    out, i, n = [], 0, len(rest)
    while True:
        while i < n and rest[i].isspace():
            i += 1
        if i >= n:
            return out
        if rest[i] == ":":
            return None
        arg, quote, escape = [], "", False
        while i < n and (quote or not rest[i].isspace()):
            c = rest[i]
            i += 1
            if escape:
                escape = False
            elif c == "\\":
                escape = True
                continue
            elif quote:
                if c == quote:
                    quote = ""
                    continue
            elif c in "\"'":
                quote = c
                continue
            elif c == "#":  # an unescaped '#': the rest of the line is a comment
                out.append("".join(arg))
                return [a for a in out if a]
            arg.append(c)
        if quote:
            return None
        if arg:
            out.append("".join(arg))


def sbatch_options(script: str) -> list[tuple[str, str | None]]:
    """``(option, value)`` for every argument sbatch reads from the script's directives, sorted."""
    found: list[tuple[str, str | None]] = []
    for line in script.splitlines():  # sbatch splits on "\n" only; splitlines() splits more
        if line.startswith("#SBATCH"):
            rest = line[len("#SBATCH"):]
        elif line.startswith("#SLURM"):
            rest = line[len("#SLURM"):]
        else:
            stripped = "".join(c for c in line if not c.isspace())
            if stripped and not stripped.startswith("#"):
                break  # the first command: sbatch reads no further directives
            continue
        if re.search("packjob|hetjob", line, re.IGNORECASE):
            found.append(HETJOB)
        args = _arguments(rest)
        if args is None:
            found.append(FATAL)
            continue
        for arg in args:
            name, eq, value = arg.partition("=")
            found.append((name, value if eq else None))
    return sorted(found, key=repr)


CATALOG = {"enterprise": {"backend": "slurm", "offerings": {"h100": {
    "model": "H100", "counts": [1, 2], "price_per_hour": 2.5, "max_hours": 8,
    "gres": "gpu:h100", "partition": "h100"}}}}
ENV = {"PATH": "/usr/bin:/bin", "JUPYTERHUB_API_TOKEN": "secret"}


@functools.cache
def backend() -> SlurmBackend:
    """One slurm backend (default templates: ``/home/{username}``); each example sets its user's name."""
    from tests.fixtures.hubless import hubless_backend

    off = load_catalog(CATALOG).by_key("enterprise/h100")
    return hubless_backend(SlurmBackend, Config(), off, username="alice")


def script_for(name: str) -> str:
    """The job script the backend submits for user ``name`` (raises its refusal)."""
    b = backend()
    b.user.name = name
    return sbatch_script(b.job_spec(ENV))


def intended(name: str) -> list[tuple[str, str | None]]:
    """The options meant for user ``name``: the name whole in the paths, its tag in name and comment."""
    home, tag = f"/home/{name}", safe_tag(name)
    return sorted([
        ("--job-name", f"hybridhub-hybridhub-{tag}"),
        ("--comment", f"hybridhub:hybridhub:{tag}:"),
        ("--gres", "gpu:h100:1"),
        ("--time", "0-01:00:00"),
        ("--nodes", "1"),
        ("--ntasks", "1"),
        ("--no-requeue", None),
        ("--chdir", home),
        ("--output", f"{home}/.hybridhub/slurm-%j.log"),
        ("--export", "ALL"),
        ("--partition", "h100"),
    ], key=repr)


def refusal(name: str) -> str | None:
    """The user-facing refusal of ``name``; None when the name is accepted (and then checked exactly)."""
    try:
        script = script_for(name)
    except web.HTTPError as e:
        message = getattr(e, "jupyterhub_message", "")
        assert e.status_code == 400, e
        shown = name if len(name) <= 80 else name[:80] + "..."
        assert message.startswith(f"user name {shown!r} cannot be used on the Slurm cluster: "), message
        return message
    assert sbatch_options(script) == intended(name), script
    last = script.rstrip("\n").split("\n")[-1]
    assert shlex.split(last) == ["exec", *backend().singleuser_command, *backend().get_args()]
    return None


HOSTILE = [
    "x --partition=admin",  # space
    "x\t--exclusive",  # tab
    "x\r--qos=urgent",  # CR
    "x\v--account=other",  # vertical tab
    "x\f--uid=0",  # form feed
    "$(id)",
    "x$(id)y",
    "x\u2028--partition=admin",  # LINE SEPARATOR
    "x\u2029y", "x\x85y",
    "x\n#SBATCH --partition=admin",  # newline: a line of its own
    "x\nid",
    "x#y",  # the rest of the line would be a comment: --output lost
    "#",
    "-x", "--uid=0", "-",  # a leading '-'
    ".", "..", ".hidden",  # /home/.. is not a home
    "../etc", "a/b", "/", "a\\b", "a\"b", "a'b", "a b\"c d\"", "a:b", "a,b", "a=b",
    "a%u", "%x",  # sbatch expands % patterns in --output
    "hetjob", "xHetJob", "packjob", "aPACKJOBb",  # sbatch splits the job at these words
    "", "a" * 65, "a\x00b", "\u00e9mile", "\u0430lice",  # empty, too long, NUL, non-ASCII
]


@pytest.mark.parametrize("name", HOSTILE, ids=ascii)
def test_hostile_user_names_are_refused_with_a_message_naming_the_field(name):
    assert refusal(name) is not None


@pytest.mark.parametrize("name", ["alice", "Bob", "jane.doe@uni.example", "a-b_c+d", "u1", "x" * 64, "a..b"])
def test_ordinary_user_names_give_exactly_the_intended_options(name):
    assert refusal(name) is None
    assert f"#SBATCH --chdir=/home/{name}\n" in script_for(name)


#: Characters that matter to sbatch, bash or paths, to draw names from besides arbitrary text.
SHARP = list(" \t\n\r\v\f#\"'\\$()`;%/.:,=@+-_aZ09") + ["\u2028", "\u2029", "\x85", "\xa0", "\x00", "hetjob"]


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(), st.lists(st.sampled_from(SHARP), max_size=12).map("".join)))
def test_any_user_name_is_refused_or_gives_exactly_the_intended_options(name):
    refusal(name)


@settings(max_examples=200, deadline=None)
@given(st.from_regex(r"[A-Za-z0-9_@+][A-Za-z0-9._@+-]{0,63}", fullmatch=True))
def test_names_of_the_allowed_alphabet_are_accepted(name):
    if re.search("packjob|hetjob", name, re.IGNORECASE):
        assert refusal(name) is not None
    else:
        assert refusal(name) is None


# --- the other values of a script, from JobSpec directly -----------------------------------------


def spec(**kw) -> JobSpec:
    base = dict(
        job_name="hybridhub-hub1-alice", comment="hybridhub:hub1:alice:", gres="gpu:h100", count=1,
        hours=1.0, command=["/venv/bin/jupyterhub-singleuser"], env_names=("PATH",),
        workdir="/home/alice", output="/home/alice/.hybridhub/slurm-%j.log", partition="h100",
    )
    base.update(kw)
    return JobSpec(**base)


def test_server_names_reach_the_tags_only_and_may_not_split_the_job():
    ok = spec(user="alice", server="my gpu", job_name=f"hybridhub-hub1-alice-{safe_tag('my gpu')}")
    assert "#SBATCH --job-name=hybridhub-hub1-alice-my_gpu\n" in sbatch_script(ok)
    with pytest.raises(web.HTTPError) as e:
        sbatch_script(spec(user="alice", server="my hetjob"))
    assert e.value.jupyterhub_message.startswith("server name 'my hetjob' cannot be used on the Slurm cluster: ")


@pytest.mark.parametrize("field", ["workdir", "output"])
@pytest.mark.parametrize("path", ["/home/a b", "/home/a\u2028b", "/home/a#b", "/home/../etc", "/home/./a",
                                  "/home/x/hetjob", "/home/a'b"])
def test_paths_from_the_site_templates_are_checked_too(field, path):
    with pytest.raises(ValueError, match="cannot be used"):
        sbatch_script(spec(**{field: path}))


@pytest.mark.parametrize("directive", ["--qos=a b", "--qos=a#b", "--qos=\"a\"", "--qos=a\u2028b", "--qos=a\nb",
                                       "hetjob", "--comment=packjob", "qos=x", "--qos=a\\b", ""])
def test_site_directives_must_be_one_plain_option(directive):
    with pytest.raises(ValueError, match="cannot be used"):
        sbatch_script(spec(extra_directives=(directive,)))


@pytest.mark.parametrize("field", ["partition", "mem", "gres", "job_name", "comment"])
def test_catalog_and_tag_values_must_be_plain(field):
    with pytest.raises(ValueError, match="cannot be used"):
        sbatch_script(spec(**{field: "x --exclusive"}))


def test_exported_variable_names_must_be_names():
    d = sbatch_script(spec(login_environment=True, env_names=("PATH", "JUPYTERHUB_API_TOKEN")))
    assert "#SBATCH --export=PATH,JUPYTERHUB_API_TOKEN\n" in d
    for bad in ("A,B", "A B", "1A", "A=B", "A\u2028"):
        with pytest.raises(ValueError, match="cannot be used"):
            sbatch_script(spec(login_environment=True, env_names=("PATH", bad)))


def test_command_words_are_quoted_and_cannot_start_a_line():
    script = sbatch_script(spec(command=["/v/bin/jupyterhub-singleuser", "--x=$(id) `id`; a b", "#c"]))
    assert shlex.split(script.splitlines()[-1]) == ["exec", "/v/bin/jupyterhub-singleuser",
                                                    "--x=$(id) `id`; a b", "#c"]
    for bad in ("a\nb", "a\x00b"):
        with pytest.raises(ValueError, match="cannot be used"):
            sbatch_script(spec(command=["/v/bin/jupyterhub-singleuser", bad]))


def test_the_reference_parser_reads_what_sbatch_reads():
    script = ("#!/bin/bash\n#SBATCH --a=1 --b='x y' # c\n#SBATCH --d=\"p q\"\\ r\n\n# note\n"
              "#SBATCH --e\nset -eu\n#SBATCH --f\n")
    # an escaped space still ends the argument (the loop tests isspace before the escape)
    assert sbatch_options(script) == sorted([("--a", "1"), ("--b", "x y"), ("--d", "p q"), ("r", None),
                                             ("--e", None)], key=repr)
    assert HETJOB in sbatch_options("#SBATCH --job-name=myHetJob\n")
    assert FATAL in sbatch_options("#SBATCH --comment='x\n")
