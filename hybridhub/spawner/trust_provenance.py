"""Trust enforcement and session provenance for :class:`hybridhub.spawner.HybridSpawner`.

:class:`TrustAndProvenanceMixin` holds the settings and the steps HybridSpawner runs
around a launch:

1. before admission, :meth:`~TrustAndProvenanceMixin.plan_confinement` refuses (403)
   a launch on untrusted hardware charged to a barred group and lists the confidential
   folders to leave out;
2. before the backend starts, :meth:`~TrustAndProvenanceMixin.confine` limits the
   server token, filters the environment and hides the folders (:mod:`hybridhub.spawner.trust`);
3. once it runs, :meth:`~TrustAndProvenanceMixin.record_start` writes the provenance
   record, and :meth:`~TrustAndProvenanceMixin.record_end` closes it on stop or when
   ``poll`` finds the server gone (:mod:`hybridhub.accounting.sessions`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from traitlets import Dict, HasTraits, List, Unicode, default

from hybridhub.accounting.sessions import END_FAILED_START, SessionLog
from hybridhub.accounting.trust import TrustPolicy
from hybridhub.errors import first_line
from hybridhub.spawner import stop_requester
from hybridhub.spawner.provenance import describe, end_reason
from hybridhub.spawner.trust import (
    DEFAULT_ENV_ALLOW,
    DEFAULT_ENV_DENY,
    DEFAULT_TRUST_WORDS,
    UNTRUSTED,
    BarredFromUntrusted,
    Confinement,
    ConfinementError,
    clamp_server_token,
    confine_backend,
    offering_trust,
)
from hybridhub.spawner.trust import plan_confinement as plan


class TrustAndProvenanceMixin(HasTraits):
    """Bars, confinement and provenance records for HybridSpawner (see the module doc)."""

    trust_words = Dict(
        Unicode(),
        help="Plain words the picker shows for each trust level ('trusted', 'untrusted'), "
        f"e.g. {DEFAULT_TRUST_WORDS}.",
    ).tag(config=True)

    untrusted_env_deny = List(
        Unicode(),
        list(DEFAULT_ENV_DENY),
        help="Environment variable names (shell patterns) never passed to a server on "
        "untrusted hardware: cloud credentials and hybridhub secrets. JUPYTERHUB_* (the "
        "server's own token) always passes.",
    ).tag(config=True)

    untrusted_env_allow = List(
        Unicode(),
        list(DEFAULT_ENV_ALLOW),
        help="Exact environment variable names passed to untrusted hardware even though an "
        "`untrusted_env_deny` pattern matches (they only describe the hardware).",
    ).tag(config=True)

    confinement: Confinement | None = None
    session_id: int | None = None

    @default("trust_words")
    def _default_trust_words(self):
        return dict(DEFAULT_TRUST_WORDS)

    @property
    def session_log(self) -> SessionLog:
        """Provenance records in the accounting database."""
        return SessionLog(self.accounting.db)

    @property
    def trust_policy(self) -> TrustPolicy:
        """Groups' bars and confidential folders in the accounting database."""
        return TrustPolicy(self.accounting.db)

    def trust_of(self, offering) -> str:
        """The offering's trust level, lowered by any untrusted host it may land on."""
        return offering_trust(offering, self.backend_class(offering).host_labels(offering, self.config))

    def words_for(self, trust: str) -> str:
        """The plain words for a trust level."""
        return self.trust_words.get(trust) or DEFAULT_TRUST_WORDS.get(trust, trust)

    # --- the picker ---------------------------------------------------------------

    def picker_trust(self, offerings: list, groups: set[str]) -> dict[str, dict[str, Any]]:
        """Per offering key: trust, its words, groups barred from it, folders left out."""
        policies = self.trust_policy.for_groups(groups)
        out = {}
        for off in offerings:
            trust = self.trust_of(off)
            untrusted = trust == UNTRUSTED
            confinement = plan(
                trust=trust, charged_group="", barred={},
                confidential={g: p.confidential_dirs for g, p in policies.items()},
                offering_label=off.key,
            )
            out[off.key] = {
                "trust": trust,
                "words": self.words_for(trust),
                "barred": sorted(g for g, p in policies.items() if untrusted and p.barred_untrusted),
                "hidden": confinement.hidden_paths,
            }
        return out

    # --- a launch -----------------------------------------------------------------

    def plan_confinement(self, groups: set[str]) -> Confinement:
        """What this launch must leave out; a 403 if its group is barred (runs in a thread)."""
        trust = self.trust_of(self.offering)
        policies = self.trust_policy.for_groups(groups)
        try:
            return plan(
                trust=trust,
                charged_group=self.launch.group,
                barred={g: p.barred_untrusted for g, p in policies.items()},
                confidential={g: p.confidential_dirs for g, p in policies.items()},
                offering_label=f"{self.offering.key} ({self.offering.model})",
                words=self.words_for(trust),
            )
        except BarredFromUntrusted as e:
            self.log.info("Refused %s: %s", self._log_name, e)
            raise self.refused(403, e.user_message, "trust") from None

    def confine(self, backend) -> None:
        """Limit the token, filter the environment and hide folders (untrusted hardware only)."""
        if self.confinement is None or not self.confinement.untrusted:
            return
        try:
            confine_backend(
                backend, self.confinement,
                env_deny=self.untrusted_env_deny, env_allow=self.untrusted_env_allow,
            )
        except ConfinementError as e:
            raise self.refused(
                403, f"{self.offering.key} cannot leave your confidential folders out: {e}", "trust"
            ) from None
        clamp_server_token(self)

    def confinement_notice(self) -> str | None:
        """The spawn-page line naming the folders left out, if any."""
        return self.confinement.notice() if self.confinement is not None else None

    # --- provenance -----------------------------------------------------------------

    async def record_start(self, backend) -> None:
        """Write the provenance record of a server that has just started."""
        try:
            facts = await describe(backend)
            confinement = self.confinement or Confinement(self.trust_of(self.offering))
            req, off = self.launch, self.offering
            self.session_id = await asyncio.to_thread(
                self.session_log.open,
                username=self.user.name, server_name=self.name, group=req.group,
                resource_class=off.resource_class, offering=off.key, accelerator=off.model,
                count=req.count, trust=confinement.trust, backend=off.backend,
                reservation_id=self.reservation_id, hidden_dirs=confinement.hidden_paths,
                **facts,
            )
        except Exception:
            self.log.exception("Could not write the provenance record of %s", self._log_name)

    async def record_failed_start(self, backend, error: BaseException) -> None:
        """Write and close the record of a server that failed to start, with the error's first line."""
        await self.record_start(backend)
        if self.session_id is None:
            return
        try:
            await asyncio.to_thread(
                self.session_log.close, self.session_id, observed=END_FAILED_START, detail=first_line(error),
            )
        except Exception:
            self.log.exception("Could not close the provenance record of %s", self._log_name)

    async def record_end(self, backend=None, status: Any = None) -> None:
        """Close the record: by what ``poll`` observed (``status``), else the intended reason."""
        try:
            log = self.session_log
            session_id = self.session_id
            if session_id is None:
                session_id = await asyncio.to_thread(log.open_session_id, self.user.name, self.name)
            if session_id is None:
                return
            if status is None:  # a stop: by whom, if another account asked the REST API for it
                default, by = stop_requester.end_of(stop_requester.current(), self.user.name)
                await asyncio.to_thread(log.close, session_id, default=default, by=by)
            else:
                reason, detail = end_reason(backend, status)
                await asyncio.to_thread(log.close, session_id, observed=reason, detail=detail)
        except Exception:
            self.log.exception("Could not close the provenance record of %s", self._log_name)
