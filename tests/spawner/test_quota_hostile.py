"""A hostile student against a real hub, with their own REST token and browser cookies.

An exhausted budget admits nothing, however small; tiny or malformed numbers are 400s
naming the field; huge values are never echoed back or logged; refusals are one log
line without a traceback; no cookie value or token the student held reaches the log.
"""

from __future__ import annotations

import re

import pytest
import requests

from hybridhub.accounting.db import Database
from hybridhub.accounting.ledger import Accounting
from hybridhub.hub.config import DEMO_USER_PASSWORD

pytestmark = pytest.mark.usefixtures("hub_prereqs")

OPTS = {"class": "community", "model": "rtx4090", "count": 1, "hours": 1, "group": "course-ml101"}


def browser_session(hub, user: str) -> requests.Session:
    """Log in through the hub's login form, as a browser would, and open a few pages."""
    web = requests.Session()
    page = web.get(f"{hub.url}/hub/login", timeout=30)
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text).group(1)
    r = web.post(f"{hub.url}/hub/login?next=", timeout=60,
                 data={"username": user, "password": DEMO_USER_PASSWORD, "_xsrf": xsrf})
    assert r.status_code == 200 and "/hub/login" not in r.url, r.url
    for path in ("/hub/home", "/hub/spawn", "/hub/token"):
        assert web.get(f"{hub.url}{path}", timeout=60).status_code == 200
    return web


@pytest.fixture
def hub(hub_factory):
    return hub_factory()


def test_hostile_student_gets_refusals_that_do_not_flood_and_no_secret_is_logged(hub):
    acct = Accounting(Database(hub.db_url))
    left = acct.remaining("course-ml101", "community", "rtx4090")
    acct.set_budget(left.budget_id, amount=0)  # the course budget is used up
    web = browser_session(hub, "bob")
    token = hub.user_token("bob")

    def spawn(body, **kw):
        return requests.post(f"{hub.api_url}/users/bob/server", json=body, timeout=60,
                             headers={"Authorization": f"token {token}"}, **kw)

    # an exhausted budget: the nanosecond launch is refused for its hours, the minimum
    # launch for the budget; nothing starts
    r = spawn({**OPTS, "hours": 1e-9})
    assert r.status_code == 400 and "hours" in r.json()["message"], r.text
    assert "at least 0.25" in r.json()["message"]
    r = spawn({**OPTS, "hours": 0.25})
    assert r.status_code == 403 and "0 h left" in r.json()["message"], r.text
    for bad, field in (({**OPTS, "count": "1"}, "count"), ({**OPTS, "hours": " 1 "}, "hours"),
                       ({**OPTS, "count": "\u0661"}, "count"),
                       ({**OPTS, "hours": 1e-300}, "hours")):
        r = spawn(bad)
        assert r.status_code == 400 and f"Invalid option {field}:" in r.json()["message"], r.text
    # big values: quoted back cut short (under the body limit), refused unread (over it)
    r = spawn({**OPTS, "model": "M" * 12_000})
    assert r.status_code == 400 and len(r.content) < 1000, len(r.content)
    r = spawn({**OPTS, "model": "M" * 1_000_000})
    assert r.status_code == 413 and len(r.content) < 1000, r.text[:300]
    assert "16384 bytes" in r.json()["message"]
    assert hub.server_model("bob") is None
    assert acct.open_reservations("bob") == []

    log = hub.log()
    assert "M" * 100 not in log  # never logged in full
    assert "Traceback" not in log
    refusals = [line for line in log.splitlines() if "refused" in line and "bob" in line]
    assert len(refusals) >= 8 and all(line.startswith(("[W", "[I")) for line in refusals)
    assert not [line for line in log.splitlines()
                if line.startswith("[E") and "bob" in line], "a user error logged as ERROR"
    # every secret the student held: cookies (session id, login, xsrf) and the token
    secrets = {c.name: c.value for c in web.cookies if len(c.value) >= 8}
    assert {"jupyterhub-session-id", "jupyterhub-hub-login"} <= set(secrets), secrets.keys()
    secrets["token"] = token
    leaked = [name for name, value in secrets.items() if value in log]
    assert leaked == [], f"in the hub log: {leaked}"
    assert "xsrf" in log  # JupyterHub's own xsrf lines were there, scrubbed
