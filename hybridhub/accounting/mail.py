"""Threshold mail: a group's leaders get one e-mail per budget threshold (80 %, 95 %, used up).

The meter records threshold notices once per budget period (:mod:`hybridhub.accounting.ledger`);
:class:`ThresholdMailer` sends each one to each leader's address once, remembered in
:class:`NoticeMail` (the row is claimed in the same transaction the mail is sent in, so a
failed send is retried on the next run and a sent one never twice).  Off unless an SMTP
host is configured (``HYBRIDHUB_SMTP_HOST``; see :meth:`ThresholdMailer.from_env`).
"""

from __future__ import annotations

import json
import logging
import smtplib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage

from sqlalchemy import DateTime, ForeignKey, Integer, String, UniqueConstraint, select
from sqlalchemy.orm import Mapped, mapped_column

from hybridhub.accounting.db import Database
from hybridhub.accounting.forecast import burn_rates, forecast
from hybridhub.accounting.ledger import fmt_amount
from hybridhub.accounting.models import Base, Budget, Group, Notice, utcnow

log = logging.getLogger("hybridhub.mail")

#: Notice levels that are mailed, and how the subject line names them.
MAILED_LEVELS = {"80": "80 % used", "95": "95 % used", "exhausted": "used up"}


class NoticeMail(Base):
    """A threshold notice sent to one address (at most once)."""

    __tablename__ = "notice_mails"
    __table_args__ = (UniqueConstraint("notice_id", "address", name="uq_notice_mails"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    notice_id: Mapped[int] = mapped_column(ForeignKey("notices.id", ondelete="CASCADE"))
    address: Mapped[str] = mapped_column(String(320))
    sent_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


@dataclass
class ThresholdMailer:
    """Sends threshold notices to group leaders over SMTP."""

    db: Database
    host: str
    port: int = 25
    sender: str = "hybridhub@localhost"
    leaders: Mapping[str, list[str]] = field(default_factory=dict)
    portal_url: str = ""
    timeout: float = 30.0

    @classmethod
    def from_env(cls, db: Database, env: Mapping[str, str]) -> ThresholdMailer | None:
        """The mailer the environment configures, or None when ``HYBRIDHUB_SMTP_HOST`` is unset.

        ``HYBRIDHUB_SMTP_PORT`` (default 25), ``HYBRIDHUB_MAIL_FROM``,
        ``HYBRIDHUB_LEADER_ADDRESSES`` (JSON ``{"group": ["leader@example.org"]}``) and
        ``HYBRIDHUB_PORTAL_URL`` (a link in the mail) complete it.
        """
        host = env.get("HYBRIDHUB_SMTP_HOST", "")
        if not host:
            return None
        leaders = json.loads(env.get("HYBRIDHUB_LEADER_ADDRESSES", "{}") or "{}")
        if not isinstance(leaders, dict) or not all(
            isinstance(v, list) and all(isinstance(a, str) for a in v) for v in leaders.values()
        ):
            raise ValueError("HYBRIDHUB_LEADER_ADDRESSES must be a JSON object of address lists")
        return cls(db, host, int(env.get("HYBRIDHUB_SMTP_PORT", "25")),
                   env.get("HYBRIDHUB_MAIL_FROM", "hybridhub@localhost"), leaders,
                   env.get("HYBRIDHUB_PORTAL_URL", ""))

    def message(self, notice: Notice, budget: Budget, group: str, to: str,
                now: datetime) -> EmailMessage:
        """The e-mail for one notice: the budget's figures and its forecast."""
        scope = budget.resource_class + (f" ({budget.model})" if budget.model else "")
        remaining = max(0.0, budget.amount - budget.used - budget.reserved)
        rate = burn_rates(self.db, [budget.id], now).get(budget.id, 0.0)
        outlook = forecast({"id": budget.id, "remaining": remaining, "resets_at": None},
                           rate, now)
        share = 100.0 * budget.used / budget.amount if budget.amount else 100.0
        msg = EmailMessage()
        msg["From"] = self.sender
        msg["To"] = to
        msg["Subject"] = f"[hybridhub] {group}: {scope} budget {MAILED_LEVELS[notice.level]}"
        lines = [
            f"{notice.message}.",
            "",
            f"Group:      {group}",
            f"Budget:     {scope}, {budget.period}",
            f"Amount:     {fmt_amount(budget.amount, budget.unit)}",
            f"Used:       {fmt_amount(budget.used, budget.unit)} ({share:.1f} %)",
            f"Reserved:   {fmt_amount(budget.reserved, budget.unit)} (running servers)",
            f"Remaining:  {fmt_amount(remaining, budget.unit)}",
            f"Burn rate:  {fmt_amount(rate, budget.unit)} per day over the last "
            f"{outlook.window_days} days",
            f"Runs out:   {outlook.label}",
        ]
        if self.portal_url:
            lines += ["", f"Top it up or see who used it: {self.portal_url}"]
        msg.set_content("\n".join(lines) + "\n")
        return msg

    def send_pending(self, now: datetime | None = None) -> int:
        """Send every notice not yet mailed to each of its group's leaders; how many sent."""
        now = now or utcnow()
        with self.db.session() as s:
            pending = s.execute(
                select(Notice.id, Group.name)
                .join(Group, Group.id == Notice.group_id)
                .where(Notice.reservation_id.is_(None), Notice.level.in_(list(MAILED_LEVELS)))
                .order_by(Notice.id)
            ).all()
            done = {(n, a) for n, a in s.execute(select(NoticeMail.notice_id, NoticeMail.address))}
        todo = [(nid, group, a) for nid, group in pending for a in self.leaders.get(group, [])
                if (nid, a) not in done]
        sent = 0
        if not todo:
            return 0
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
            for nid, group, address in todo:
                with self.db.session() as s:
                    notice = s.get(Notice, nid)
                    budget = s.get(Budget, notice.budget_id)
                mail = self.message(notice, budget, group, address, now)
                with self.db.session() as s:
                    s.add(NoticeMail(notice_id=nid, address=address, sent_at=now))
                    s.flush()  # claims it: a concurrent mailer fails here, not after sending
                    smtp.send_message(mail)
                sent += 1
                log.info("mailed the %s notice of %s to a leader", notice.level, group)
        return sent
