"""``hybridhub-quota``: the portal's REST API from the command line.

    hybridhub-quota [--url URL] [--token TOKEN] COMMAND ...

    list [--group G] [--json]                    groups and budgets you may see
    set GROUP CLASS AMOUNT [--model M] [--unit hours|credits] [--period P]
        [--per-user-cap X] [--starts YYYY-MM-DD] [--ends YYYY-MM-DD]
                                                 create a budget or set its amount (admins)
    top-up GROUP CLASS AMOUNT [--model M]        add to a budget (admins, the group's leader)
    freeze GROUP [--thaw]                        freeze or thaw a group (admins)
    export [--group G] [--user U] [--class C] [--since D] [--until D]
        [--bucket day|week|month] [-o FILE]      usage as CSV (with cost in money)
    usage [the same filters]                     cost and accelerator-hours per group and class
    demand [--since D] [--until D] [-o FILE]     refused launches (unmet demand) as CSV
    import FILE                                  budgets from CSV, all lines or none (admins)
    theta-billing --class C [--class C2] --since D --until D [--no-balance]
                                                 per day and group, what hybridhub charged for the
                                                 Theta classes against Theta's billing/usage, with the
                                                 difference; Theta's balance against the running nodes
                                                 (Theta's URL, project and key from $THETA_CONTROLLER_BASE_URL,
                                                 $THETA_PROJECT_ID and $THETA_API_KEY)

The portal URL comes from ``--url`` or ``$HYBRIDHUB_PORTAL_URL`` (e.g.
``https://hub.example.edu/services/hybridhub-portal/``), the token from ``--token`` or
``$JUPYTERHUB_API_TOKEN`` (a hub API token; create one on the hub's token page).  ``-o -``
writes to standard output, as leaving ``-o`` out does.  The token is sent only in the
``Authorization`` header and never printed.  Errors print the
portal's message (and the field it names) and exit with status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import quote, urlencode
from urllib.request import Request, urlopen


class CliError(Exception):
    """A failure to report to the person at the terminal."""


class PortalClient:
    """A small client of the portal's REST API."""

    def __init__(self, url: str, token: str, timeout: float = 60.0):
        self.url = url.rstrip("/") + "/"
        self._token = token
        self.timeout = timeout

    def __repr__(self) -> str:  # never show the token
        return f"PortalClient({self.url!r})"

    def request(self, method: str, path: str, body: Any = None, *,
                content_type: str = "application/json") -> tuple[bytes, str]:
        """Send a request; return the body and its content type, or raise :class:`CliError`."""
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
        req = Request(self.url + path, data=data, method=method, headers={
            "Authorization": f"token {self._token}", "Accept": "application/json",
            **({"Content-Type": content_type} if data is not None else {}),
        })
        try:
            with urlopen(req, timeout=self.timeout) as resp:
                return resp.read(), resp.headers.get("Content-Type", "")
        except HTTPError as e:
            raise CliError(_error_text(e.code, e.read())) from None
        except URLError as e:
            raise CliError(f"cannot reach the portal at {self.url}: {e.reason}") from None

    def json(self, method: str, path: str, body: Any = None) -> Any:
        """A JSON request and its decoded answer."""
        raw, _ = self.request(method, path, body)
        return json.loads(raw)

    def budget_id(self, group: str, resource_class: str, model: str | None) -> int:
        """The id of ``group``'s budget for ``resource_class`` (and ``model``)."""
        found = self.json("GET", f"api/groups/{quote(group, safe='')}")
        for b in found["budgets"]:
            if b["resource_class"] == resource_class and b["model"] == model:
                return b["id"]
        what = f"{resource_class} ({model})" if model else resource_class
        raise CliError(f"group {group} has no budget for {what}")


def _error_text(status: int, raw: bytes) -> str:
    try:
        body = json.loads(raw)
    except ValueError:
        return f"HTTP {status}: {raw[:200].decode(errors='replace')}"
    text = f"HTTP {status}: {body.get('message', '')}"
    if body.get("field"):
        text += f" (field: {body['field']})"
    for err in body.get("errors", []):
        text += f"\n  line {err['line']}: {err['reason']}"
    return text


def _fmt_budgets(groups: list[dict[str, Any]]) -> str:
    lines = [f"{'group':<20} {'class':<12} {'model':<12} {'period':<8} {'amount':>10} "
             f"{'used':>10} {'reserved':>10} {'remaining':>10} unit   id   runs out"]
    for g in groups:
        flag = " (frozen)" if g["frozen"] else ""
        if not g["budgets"]:
            lines.append(f"{g['name'] + flag:<20} (no budgets)")
        for b in g["budgets"]:
            lines.append(
                f"{g['name'] + flag:<20} {b['resource_class']:<12} {b['model'] or '-':<12} "
                f"{b['period']:<8} {b['amount']:>10.2f} {b['used']:>10.2f} "
                f"{b['reserved']:>10.2f} {b['remaining']:>10.2f} {b['unit']:<6} {b['id']:<4} "
                f"{b.get('forecast', {}).get('label', '')}"
            )
    return "\n".join(lines)


def _fmt_usage(rows: list[dict[str, Any]]) -> str:
    totals: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        t = totals.setdefault((r["group"], r["resource_class"]), [0.0, 0.0, 0.0])
        t[0] += r["cost"]
        t[1] += r["accelerator_hours"]
        t[2] += r["amount"]
    lines = [f"{'group':<20} {'class':<12} {'cost ($)':>12} {'accel-hours':>12} {'amount':>12}"]
    for (group, rc), (cost, hours, amount) in sorted(totals.items()):
        lines.append(f"{group:<20} {rc:<12} {cost:>12.2f} {hours:>12.4f} {amount:>12.4f}")
    cost, hours = sum(t[0] for t in totals.values()), sum(t[1] for t in totals.values())
    lines.append(f"{'total':<33} {cost:>12.2f} {hours:>12.4f}")
    return "\n".join(lines)


def _usage_query(args: argparse.Namespace) -> str:
    query = {k: v for k, v in {"group": args.group, "user": args.user, "class": args.cls,
                               "since": args.since, "until": args.until,
                               "bucket": args.bucket}.items() if v}
    return f"?{urlencode(query)}" if query else ""


def _write(raw: bytes, output: str | None, out) -> None:
    """``raw`` into the file ``output``, or onto ``out`` when there is none or it is ``-``."""
    if output and output != "-":
        with open(output, "wb") as f:
            f.write(raw)
    else:
        out.write(raw.decode())


def _theta_billing(args: argparse.Namespace, client: PortalClient, out) -> None:
    """The Theta billing reconciliation (needs hybridhub's [theta] extra)."""
    import asyncio
    import datetime as dt

    try:
        from hybridhub.backends.theta.billing import balance, format_report, reconcile_days, theta_usage
        from hybridhub.backends.theta.client import ThetaClient, ThetaError
    except ImportError as e:
        raise CliError(f"the Theta report needs hybridhub's [theta] extra ({e})") from None
    names = ("THETA_CONTROLLER_BASE_URL", "THETA_PROJECT_ID", "THETA_API_KEY")
    missing = [n for n in names if not os.environ.get(n)]
    if missing:
        raise CliError(f"set {', '.join(missing)}")
    try:
        end = dt.date.fromisoformat(args.until) + dt.timedelta(days=1)  # the portal's until is exclusive
    except ValueError:
        raise CliError(f"--until is not a YYYY-MM-DD date: {args.until!r}") from None
    rows = []
    for cls in args.classes:
        query = urlencode({"class": cls, "since": args.since, "until": end.isoformat(), "bucket": "day"})
        rows += client.json("GET", f"api/usage?{query}")["rows"]
    theta = ThetaClient(*(os.environ[n] for n in names))

    async def ask():
        return await theta_usage(theta, args.since, args.until), None if args.no_balance else await balance(theta)

    try:
        days, bal = asyncio.run(ask())
    except (ThetaError, ValueError) as e:
        raise CliError(f"Theta: {e}") from None
    print(format_report(reconcile_days(rows, days, args.classes), bal), file=out)


def run(args: argparse.Namespace, client: PortalClient, out=sys.stdout) -> None:
    """Carry out one parsed command."""
    if args.command == "list":
        path = f"api/groups/{quote(args.group, safe='')}" if args.group else "api/groups"
        found = client.json("GET", path)
        groups = [found] if args.group else found["groups"]
        print(json.dumps(groups, indent=2) if args.json else _fmt_budgets(groups), file=out)
    elif args.command == "set":
        body = {"resource_class": args.resource_class, "amount": args.amount,
                "unit": args.unit, "period": args.period}
        optional = {"model": args.model, "per_user_cap": args.per_user_cap,
                    "starts_at": args.starts, "ends_at": args.ends}
        body.update({k: v for k, v in optional.items() if v is not None})
        done = client.json("POST", f"api/groups/{quote(args.group, safe='')}/budgets", body)
        b = done["budget"]
        print(f"{done['change']['action']}: {b['group']} {b['resource_class']} = "
              f"{b['amount']:g} {b['unit']} (remaining {b['remaining']:g})", file=out)
    elif args.command == "top-up":
        bid = client.budget_id(args.group, args.resource_class, args.model)
        done = client.json("POST", f"api/budgets/{bid}/top-up", {"amount": args.amount})
        b = done["budget"]
        print(f"topped up {b['group']} {b['resource_class']}: {b['amount']:g} {b['unit']} "
              f"(remaining {b['remaining']:g})", file=out)
    elif args.command == "freeze":
        client.json("POST", f"api/groups/{quote(args.group, safe='')}/freeze",
                    {"frozen": not args.thaw})
        print(f"{'thawed' if args.thaw else 'froze'} {args.group}", file=out)
    elif args.command == "export":
        raw, _ = client.request("GET", "api/usage.csv" + _usage_query(args))
        _write(raw, args.output, out)
    elif args.command == "usage":
        print(_fmt_usage(client.json("GET", "api/usage" + _usage_query(args))["rows"]), file=out)
    elif args.command == "demand":
        query = {k: v for k, v in {"since": args.since, "until": args.until}.items() if v}
        raw, _ = client.request("GET", "api/demand.csv" + (f"?{urlencode(query)}" if query else ""))
        _write(raw, args.output, out)
    elif args.command == "theta-billing":
        _theta_billing(args, client, out)
    elif args.command == "import":
        with open(args.file, "rb") as f:
            data = f.read()
        raw, _ = client.request("POST", "api/budgets/import", data, content_type="text/csv")
        done = json.loads(raw)
        print(f"imported {done['imported']} budget(s)", file=out)


def _add_theta_billing(sub) -> None:
    tb = sub.add_parser("theta-billing", help="hybridhub's charges for the Theta classes against Theta's bill")
    tb.add_argument("--class", dest="classes", action="append", required=True, help="a class on the theta backend")
    tb.add_argument("--since", required=True, help="YYYY-MM-DD (inclusive)")
    tb.add_argument("--until", required=True, help="YYYY-MM-DD (inclusive)")
    tb.add_argument("--no-balance", action="store_true", help="leave out the balance and its warning")


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(
        prog="hybridhub-quota", description="Manage hybridhub quotas through the portal's API.",
    )
    p.add_argument("--url", default=os.environ.get("HYBRIDHUB_PORTAL_URL"),
                   help="portal URL (default $HYBRIDHUB_PORTAL_URL)")
    p.add_argument("--token", default=None,
                   help="hub API token (default $JUPYTERHUB_API_TOKEN)")
    sub = p.add_subparsers(dest="command", required=True)

    ls = sub.add_parser("list", help="groups and budgets you may see")
    ls.add_argument("--group")
    ls.add_argument("--json", action="store_true", help="print JSON")

    def budget_command(name: str, help: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=help)
        cmd.add_argument("group")
        cmd.add_argument("resource_class")
        cmd.add_argument("amount", type=float)
        cmd.add_argument("--model")
        return cmd

    st = budget_command("set", "create a budget or set its amount (admins)")
    st.add_argument("--unit", default="hours", choices=["hours", "credits"])
    st.add_argument("--period", default="monthly", choices=["monthly", "term", "oneoff"])
    st.add_argument("--per-user-cap", type=float)
    st.add_argument("--starts", help="YYYY-MM-DD (term and one-off budgets)")
    st.add_argument("--ends", help="YYYY-MM-DD")

    budget_command("top-up", "add to a budget (admins, the group's leader)")

    fr = sub.add_parser("freeze", help="freeze or thaw a group (admins)")
    fr.add_argument("group")
    fr.add_argument("--thaw", action="store_true", help="thaw instead")

    for name, help in (("export", "usage as CSV, with cost in money"),
                       ("usage", "cost and accelerator-hours per group and class")):
        ex = sub.add_parser(name, help=help)
        ex.add_argument("--group")
        ex.add_argument("--user")
        ex.add_argument("--class", dest="cls")
        ex.add_argument("--since", help="YYYY-MM-DD")
        ex.add_argument("--until", help="YYYY-MM-DD")
        ex.add_argument("--bucket", choices=["day", "week", "month"])
        if name == "export":
            ex.add_argument("-o", "--output", help="write to FILE (none or '-': standard output)")

    dm = sub.add_parser("demand", help="refused launches (unmet demand) as CSV")
    dm.add_argument("--since", help="YYYY-MM-DD")
    dm.add_argument("--until", help="YYYY-MM-DD")
    dm.add_argument("-o", "--output", help="write to FILE (none or '-': standard output)")

    im = sub.add_parser("import", help="budgets from CSV, all lines or none (admins)")
    im.add_argument("file")
    _add_theta_billing(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``hybridhub-quota``; returns the exit status."""
    args = parser().parse_args(argv)
    token = args.token or os.environ.get("JUPYTERHUB_API_TOKEN")
    if not args.url:
        print("error: give --url or set HYBRIDHUB_PORTAL_URL", file=sys.stderr)
        return 2
    if not token:
        print("error: give --token or set JUPYTERHUB_API_TOKEN", file=sys.stderr)
        return 2
    try:
        run(args, PortalClient(args.url, token))
    except CliError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
