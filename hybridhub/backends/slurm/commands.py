"""Running Slurm's client commands: asyncio subprocesses with a timeout, answers shared by every server."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Mapping

from traitlets import Dict, Float, List, Unicode
from traitlets.config import Config, LoggingConfigurable


class SlurmCommandError(RuntimeError):
    """A Slurm command failed, timed out or answered something unreadable: state unknown."""


class SlurmCommands(LoggingConfigurable):
    """How the hub runs Slurm's client commands (asyncio subprocesses with a timeout)."""

    sbatch = List(Unicode(), ["sbatch"], help="The sbatch command (argv prefix).").tag(config=True)
    squeue = List(
        Unicode(),
        ["squeue", "--json", "--states=all", "--me"],
        help="Command printing the hub's jobs as JSON (one call serves every server's poll).",
    ).tag(config=True)
    scancel = List(Unicode(), ["scancel"], help="The scancel command (argv prefix).").tag(config=True)
    sinfo = List(
        Unicode(), ["sinfo", "--json"], help="Command printing the nodes as JSON (free GRES)."
    ).tag(config=True)
    env = Dict(
        help="Extra environment for Slurm commands, e.g. {'SLURM_CONF': '/etc/slurm/slurm.conf'}."
    ).tag(config=True)
    timeout = Float(
        10.0, help="Seconds one Slurm command may take; a slower one counts as failed (state unknown)."
    ).tag(config=True)
    cache_seconds = Float(
        1.0,
        help="Seconds one squeue/sinfo answer is reused by every server's poll (one call, not one "
        "per server).",
    ).tag(config=True)

    async def run(
        self, argv: list[str], *, stdin: str = "", env: Mapping[str, str] | None = None, clean: bool = False
    ) -> str:
        """Run ``argv``; its stdout, or :class:`SlurmCommandError` (failure or timeout).

        ``clean``: the command gets ``env`` and :attr:`env` only, plus the hub's ``PATH`` and
        ``SLURM_CONF`` to find Slurm, none of the hub's other variables (its secrets).
        """
        base = os.environ
        if clean:
            base = {k: v for k, v in os.environ.items() if k == "SLURM_CONF"}
            base["PATH"] = os.environ.get("PATH", os.defpath)
        full_env = {**base, **self.env, **(env or {})}
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=full_env,
            )
        except OSError as e:
            raise SlurmCommandError(f"{argv[0]}: {e}") from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), self.timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise SlurmCommandError(f"{argv[0]} did not answer within {self.timeout:g} s") from None
        if proc.returncode != 0:
            raise SlurmCommandError(
                f"{argv[0]} exited {proc.returncode}: {err.decode(errors='replace').strip()[:300]}"
            )
        return out.decode(errors="replace")

    async def json(self, argv: list[str]) -> dict:
        """Run ``argv`` and parse its JSON (unreadable output is a :class:`SlurmCommandError`)."""
        out = await self.run(argv)
        try:
            return json.loads(out)
        except ValueError:
            raise SlurmCommandError(f"{argv[0]} printed no JSON") from None

    _cache: dict[tuple, tuple[float, asyncio.Future]] = {}

    async def cached_json(self, argv: list[str]) -> dict:
        """:meth:`json`, shared by concurrent callers and reused for ``cache_seconds``."""
        key = (tuple(argv), tuple(sorted(self.env.items())))
        now = time.monotonic()
        hit = SlurmCommands._cache.get(key)
        if hit is not None and now - hit[0] < self.cache_seconds:
            return await asyncio.shield(hit[1])
        fut = asyncio.ensure_future(self.json(argv))
        SlurmCommands._cache[key] = (now, fut)
        try:
            return await asyncio.shield(fut)
        except SlurmCommandError:
            SlurmCommands._cache.pop(key, None)  # do not reuse a failure
            raise

    async def jobs(self) -> dict[int, dict]:
        """Job id -> ``squeue --json`` record, for the hub's jobs."""
        data = await self.cached_json(list(self.squeue))
        return {int(j["job_id"]): j for j in data.get("jobs", [])}

    async def nodes(self) -> list[dict]:
        """The ``sinfo --json`` node records."""
        return list((await self.cached_json(list(self.sinfo))).get("nodes", []))

    async def submit(self, script: str, env: Mapping[str, str]) -> int:
        """``sbatch --parsable`` the script (on stdin) with exactly ``env``; the new job id."""
        out = await self.run([*self.sbatch, "--parsable"], stdin=script, env=env, clean=True)
        try:
            return int(out.strip().split(";")[0])
        except ValueError:
            raise SlurmCommandError(f"sbatch printed no job id: {out[:100]!r}") from None

    async def cancel(self, job_id: int) -> None:
        """``scancel`` the job."""
        await self.run([*self.scancel, str(job_id)])


def _commands(config: Config) -> SlurmCommands:
    return SlurmCommands(config=config)
