"""Issue #30 in Chromium: the picker on one screen, on a phone, by keyboard and clean under axe-core.

One demo hub (SQLite, the demo's simulated inventory) for the whole module; ``dave`` is in two groups.
"""

from __future__ import annotations

import importlib.util
import json
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest

from hybridhub.accounting.db import Database
from hybridhub.accounting.models import utcnow
from hybridhub.accounting.periods import month_start
from hybridhub.accounting.sessions import SessionLog
from hybridhub.hub.config import DEMO_ADMIN_PASSWORD, DEMO_USER_PASSWORD
from tests.fixtures.browser import login
from tests.fixtures.env import docs_artifact, require
from tests.fixtures.hub import Hub, _stop_user_processes, pending_gate
from tests.fixtures.portal import accounting_on, wait_for_portal

pytestmark = pytest.mark.browser

PORTAL = "/services/hybridhub-portal/"
PORTAL_PAGES = ["", "groups", "usage", "servers", "demand", "courses", "sessions"]
#: An admin's portal: every page of the navbar, the providers' bills and an error page (a path that is none).
ADMIN_PAGES = [*PORTAL_PAGES, "trust", "audit", "provider-bills", "no-such-page"]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def hub(hub_prereqs, tmp_path_factory) -> Iterator[Hub]:
    workdir = tmp_path_factory.mktemp("hub")
    hub = Hub(workdir, env={"HYBRIDHUB_DEMO_INVENTORY": "1"},
              extra_config=pending_gate("carol", workdir / "pending-gate")).start()  # spawn-pending stays up for axe
    wait_for_portal(f"{hub.url}{PORTAL}")
    yield hub
    hub.stop()
    _stop_user_processes(hub.workdir)


def new_page(chromium, hub: Hub, user: str | None, viewport: dict):
    context = chromium.new_context(viewport=viewport)
    context.set_default_timeout(60_000)
    page = context.new_page()
    if user:
        login(page, hub.url, user, DEMO_ADMIN_PASSWORD if user == "admin" else DEMO_USER_PASSWORD)
    return page


def in_viewport(page, locator) -> bool:
    box = locator.bounding_box()
    size = page.viewport_size
    return box is not None and box["y"] >= 0 and box["y"] + box["height"] <= size["height"] \
        and box["x"] >= 0 and box["x"] + box["width"] <= size["width"]


def test_dave_sees_every_class_offering_and_start_on_one_screen(chromium, hub):
    page = new_page(chromium, hub, "dave", DESKTOP)
    try:
        page.goto(f"{hub.url}/hub/spawn")
        height = page.evaluate("document.documentElement.scrollHeight")
        assert height <= DESKTOP["height"], f"picker is {height} px tall at 1280x800"
        assert in_viewport(page, page.get_by_role("button", name="Start"))
        assert in_viewport(page, page.locator("#reserve-summary"))
        rows = page.locator("tr.offering")
        assert rows.count() == 10
        for i in range(rows.count()):
            row = rows.nth(i)
            assert in_viewport(page, row), row.get_attribute("data-offering")
            text = row.inner_text()
            assert re.search(r"\d+ GB", text) and re.search(r"\$\d+\.\d\d", text) and re.search(r"\d+ h", text), text
            assert row.locator("select").count() == 1 and row.locator(".free-now").inner_text().strip().isdigit()
        for rc in ("community", "enterprise", "aws"):
            card = page.locator(f"#class-{rc}")
            assert card.locator(".class-trust").count() == 1  # trust once per class
            shown = card.locator(".budget [data-group]:visible")
            assert shown.count() == 1 and "lab-vision" in shown.inner_text()  # the charged group's budget, once
            assert "runs out" in shown.inner_text()
        assert page.locator("#group").input_value() == "lab-vision"
        page.locator("#group").select_option("project-llm")
        for rc in ("community", "enterprise", "aws"):
            shown = page.locator(f"#class-{rc} .budget [data-group]:visible")
            assert shown.count() == 1 and "project-llm" in shown.inner_text()
        assert "of project-llm's community budget" in page.inner_text("#reserve-summary")
    finally:
        page.context.close()
    nojs = chromium.new_context(viewport=DESKTOP, java_script_enabled=False)
    try:  # without JavaScript the picker shows every group's budget (no script follows "Charge to")
        page = nojs.new_page()
        login(page, hub.url, "dave", DEMO_USER_PASSWORD)
        page.goto(f"{hub.url}/hub/spawn")
        assert page.locator("#class-community .budget [data-group]:visible").count() == 2
    finally:
        nojs.close()


#: The heaviest spawn page dave may get in the demo (issue #30 item 7: no heavier than before the redesign,
#: which served him 34,430 bytes).
PICKER_PAGE_BYTES = 33_000


def test_daves_spawn_page_is_no_heavier_than_33_kb(chromium, hub):
    page = new_page(chromium, hub, "dave", DESKTOP)
    try:
        r = page.request.get(f"{hub.url}/hub/spawn")
        assert r.ok and "hybridhub-picker" in r.text()
        assert len(r.body()) <= PICKER_PAGE_BYTES, f"dave's spawn page is {len(r.body())} bytes"
    finally:
        page.context.close()


def test_nothing_scrolls_sideways_on_a_phone(chromium, hub):
    page = new_page(chromium, hub, "dave", PHONE)
    try:
        widths = {}
        for path in ["/hub/spawn", "/hub/home"] + [PORTAL + p for p in PORTAL_PAGES]:
            page.goto(f"{hub.url}{path}")
            widths[path] = page.evaluate("document.documentElement.scrollWidth")
        admin = new_page(chromium, hub, "admin", PHONE)  # every page of the admin's, budget forms and all
        for path in [PORTAL + p for p in ADMIN_PAGES]:
            admin.goto(f"{hub.url}{path}")
            widths[f"admin {path}"] = admin.evaluate("document.documentElement.scrollWidth")
        admin.context.close()
        assert all(w <= PHONE["width"] for w in widths.values()), widths
        page.goto(f"{hub.url}/hub/spawn")
        start = page.get_by_role("button", name="Start")
        start.scroll_into_view_if_needed()
        assert in_viewport(page, start)
    finally:
        page.context.close()


def test_the_docs_screenshots_light_and_dark_desktop_and_phone(chromium, hub, tmp_path):
    """docs/picker-{1280x800,390x844}-{light,dark}.png (written to docs/ with HYBRIDHUB_UPDATE_DOCS=1)."""
    for scheme in ("light", "dark"):
        for viewport in (DESKTOP, PHONE):
            context = chromium.new_context(viewport=viewport, color_scheme=scheme)
            try:
                page = context.new_page()
                login(page, hub.url, "dave", DEMO_USER_PASSWORD)
                page.goto(f"{hub.url}/hub/spawn")
                assert page.evaluate("document.documentElement.dataset.bsTheme") == scheme
                name = f"picker-{viewport['width']}x{viewport['height']}-{scheme}.png"
                page.screenshot(path=str(docs_artifact(name, tmp_path)))
            finally:
                context.close()


def test_the_hubs_theme_toggle_switches_the_picker_and_the_portal(chromium, hub):
    page = new_page(chromium, hub, "dave", DESKTOP)  # light by default (the system's scheme)
    theme = "document.documentElement.dataset.bsTheme"
    try:
        page.goto(f"{hub.url}/hub/spawn")
        assert page.evaluate(theme) == "light"
        page.locator("#dark-theme-toggle").click()  # JupyterHub's own toggle, in its navbar
        assert page.evaluate(theme) == "dark"
        page.goto(f"{hub.url}{PORTAL}")
        assert page.evaluate(theme) == "dark"
        page.locator("#dark-theme-toggle").click()  # the same toggle in the portal's navbar
        assert page.evaluate(theme) == "light"
        page.goto(f"{hub.url}/hub/home")
        assert page.evaluate(theme) == "light"
    finally:
        page.context.close()


def focus_ring(page) -> str:
    """The focused element's outline or box shadow (what makes the focus visible)."""
    return page.evaluate("""() => { const s = getComputedStyle(document.activeElement);
        if (s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) > 0) return 'outline';
        return s.boxShadow !== 'none' ? 'shadow' : ''; }""")


def tab_to(page, selector: str, limit: int = 80) -> None:
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate("(s) => document.activeElement.matches(s)", selector):
            assert focus_ring(page), f"no visible focus on {selector}"
            return
    raise AssertionError(f"Tab never reached {selector}")


def test_offering_controls_are_named_with_model_price_and_free_count(chromium, hub):
    from playwright.sync_api import expect

    page = new_page(chromium, hub, "dave", DESKTOP)
    try:
        page.goto(f"{hub.url}/hub/spawn")
        expect(page.locator("#offering-community--rtx4090")).to_have_accessible_name(
            re.compile(r"^RTX 4090\b.*\$0\.35 per hour.*\b4 free now"))
        expect(page.locator("#offering-enterprise--h100")).to_have_accessible_name(
            re.compile(r"^H100 80GB\b.*\$2\.50 per hour.*\b16 free now"))
        expect(page.locator("#count-enterprise--h100")).to_have_accessible_name("Number of H100 80GB")
    finally:
        page.context.close()


def assert_lab_without_news_prompt(page, hub: Hub) -> None:
    """dave's Lab starts without its "get notified about official Jupyter news?" prompt (item 6)."""
    r = page.request.get(f"{hub.url}/user/dave/lab/api/settings/@jupyterlab/apputils-extension:notification")
    assert r.ok and r.json()["schema"]["properties"]["fetchNews"]["default"] == "false"
    page.wait_for_selector("#jp-main-dock-panel", timeout=120_000)
    page.wait_for_timeout(1500)
    assert "Jupyter news" not in " ".join(page.locator(".Toastify__toast").all_inner_texts())


def test_a_keyboard_alone_launches_and_a_refusal_is_announced_and_focused(chromium, hub):
    page = new_page(chromium, hub, "dave", DESKTOP)
    try:
        page.goto(f"{hub.url}/hub/spawn")
        tab_to(page, "input[name=offering]:checked")  # the radio group: one tab stop
        for _ in range(4):  # RTX 3090 -> 4090 -> 5090 -> A100 -> H100
            page.keyboard.press("ArrowDown")
        assert page.evaluate("document.activeElement.value") == "enterprise/h100"
        assert page.locator("input[name=offering]:checked").get_attribute("value") == "enterprise/h100"
        tab_to(page, "#count-enterprise--h100")
        page.keyboard.press("End")  # 8 GPUs
        assert page.locator("#count-enterprise--h100").input_value() == "8"
        tab_to(page, "#hours")
        page.keyboard.press("Control+A")
        page.keyboard.type("20")
        tab_to(page, "#group")
        tab_to(page, "button[type=submit]")
        summary = page.inner_text("#reserve-summary")
        assert "8 x 20 h x 4 = 640 accelerator-hours of lab-vision's enterprise budget" in summary
        page.keyboard.press("Enter")  # 640 h > the group's 100: refused
        error = page.locator("#spawn-error")
        error.wait_for()
        assert error.get_attribute("role") == "alert"
        assert page.evaluate("document.activeElement.id") == "spawn-error"
        assert "640 accelerator-hours" in error.inner_text()
        assert hub.server_model("dave") is None

        tab_to(page, "input[name=offering]:checked")
        for _ in range(4):  # back to the first offering, RTX 3090
            page.keyboard.press("ArrowUp")
        assert page.locator("input[name=offering]:checked").get_attribute("value") == "community/rtx3090"
        tab_to(page, "#hours")
        page.keyboard.press("Control+A")
        page.keyboard.type("1")
        tab_to(page, "#group")
        page.keyboard.press("ArrowDown")  # project-llm
        assert page.locator("#group").input_value() == "project-llm"
        tab_to(page, "button[type=submit]")
        page.keyboard.press("Enter")
        page.wait_for_url(re.compile(r"/user/dave/"), timeout=120_000)
        model = hub.wait_ready("dave")
        options = model["user_options"]
        chosen = (options["class"], options["model"], options["group"])
        assert chosen == ("community", "rtx3090", "project-llm"), options

        assert_lab_without_news_prompt(page, hub)
        page.goto(f"{hub.url}/hub/home")  # the home page with our running-servers table, under axe
        assert page.locator("#running-servers tr.running-server").count() == 1
        ours = {"light": serious_violations(page, "light")[0]}
        page.locator("#dark-theme-toggle").click()  # and in the dark theme (JupyterHub's own toggle)
        ours["dark"] = serious_violations(page, "dark")[0]
        assert not any(ours.values()), ours
        page.set_viewport_size(PHONE)  # its table scrolls in its own box on a phone
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    finally:
        page.context.close()
        if hub.server_model("dave") is not None:
            hub.stop_server("dave")


#: What hybridhub renders on the hub's pages (the rest is JupyterHub's own chrome); the portal is all ours.
OURS = ", ".join([".hybridhub-picker", "#spawn_form", "#spawn-error", "main.container-fluid", ".hybridhub-running",
                 ".hybridhub-banner", "body.portal"])


def serious_violations(page, scheme: str | None = None) -> tuple[list[str], list[str]]:
    """axe-core's serious and critical violations on the page: (in what we render, in JupyterHub's chrome).

    With ``scheme``, a page not in the hub's ``scheme`` theme is one of ours too.
    JupyterHub 6.1's login page fails color-contrast (white on its orange #f37524, 2.84:1, in the form's
    header and the Sign in button): upstream jupyterhub/jupyterhub#4260, reported here, not silenced.
    """
    from axe_playwright_python.sync_playwright import Axe

    ours, chrome = [], []
    for v in Axe().run(page).response["violations"]:
        if v["impact"] not in ("serious", "critical"):
            continue
        for node in v["nodes"]:
            target = node["target"][0] if isinstance(node["target"][0], str) else node["target"][0][0]
            mine = page.evaluate("([t, s]) => !!document.querySelector(t)?.closest(s)", [target, OURS])
            (ours if mine else chrome).append(f"{v['id']} ({v['impact']}) at {target}: {node['failureSummary']}")
    if scheme and page.evaluate("document.documentElement.dataset.bsTheme") != scheme:
        ours.append(f"the hub's {scheme} theme is not applied")
    return ours, chrome


#: A real report (docs/trust.md's example: a tampered mean, cell 2 differs).
REPORT_EXAMPLE = Path(__file__).parents[2] / "docs" / "verification-report-example.json"


@contextmanager
def session_log(hub) -> Iterator[SessionLog]:
    """Session records and verifications on the hub's own database."""
    db = Database(hub.db_url)
    try:
        yield SessionLog(db)
    finally:
        db.dispose()


@pytest.fixture(scope="module")
def verified(hub) -> dict[str, int]:
    """dave's verifications of a session on the hub's database, one per way the portal's verification page
    looks: running (it reloads itself), failed (the docs' report) and passed (that report, every cell matching)."""
    failed = json.loads(REPORT_EXAMPLE.read_text())
    cells = [{**c, "status": "match", "differences": []} if c["status"] == "differs" else c for c in failed["cells"]]
    passed = {**failed, "verdict": "passed", "cells": cells,
              "summary": {**failed["summary"], "matched": failed["summary"]["compared"], "differing": []}}
    with session_log(hub) as log:
        checked = log.open(username="dave", server_name="", group="lab-vision", resource_class="community",
                           offering="community/rtx4090", accelerator="RTX 4090", count=1, trust="untrusted",
                           backend="local", host="node-7")
        log.close(checked)
        ids = {}
        for state, report, message in [("running", None, None),
                                       ("failed", failed, "cell(s) 2 differ from the saved outputs"),
                                       ("passed", passed, "every compared cell matches")]:
            v = log.create_verification(username="dave", group="lab-vision", notebook=failed["notebook"],
                                        offering="enterprise/a100", session_id=checked)
            ids[state] = log.update_verification(v.id, state=state, message=message, report=report).id
    return ids


def refuse(page, hub: Hub) -> None:
    """dave asks the picker for 8 H200s for 20 h: 800 h > lab-vision's 100, refused."""
    page.goto(f"{hub.url}/hub/spawn")
    page.locator("#offering-enterprise--h200").check()
    page.locator("#count-enterprise--h200").select_option("8")
    page.locator("#hours").fill("20")
    page.get_by_role("button", name="Start").click()
    page.locator(".spawn-error-msg").wait_for()


def test_axe_finds_nothing_serious_in_what_we_render(chromium, hub, verified, capsys):
    """dave's pages light and dark: the login page, the picker, home, the portal's, his verifications (running,
    failed, passed) and the picker after a refused Start."""
    require(importlib.util.find_spec("axe_playwright_python") is not None, "axe-playwright-python")
    pages = [("picker", "/hub/spawn"), ("home", "/hub/home")] + \
        [(f"portal {p or 'overview'}", PORTAL + p) for p in PORTAL_PAGES] + \
        [(f"verification {state}", f"{PORTAL}verifications/{vid}") for state, vid in verified.items()]
    found: dict[str, list[str]] = {}
    upstream: dict[str, list[str]] = {}
    for scheme in ("light", "dark"):
        context = chromium.new_context(viewport=DESKTOP, color_scheme=scheme)  # the hub's theme follows the system's
        context.set_default_timeout(60_000)
        try:
            page = context.new_page()
            page.goto(f"{hub.url}/hub/login")
            found[f"login ({scheme})"], upstream[f"login ({scheme})"] = serious_violations(page, scheme)
            login(page, hub.url, "dave", DEMO_USER_PASSWORD)
            for name, path in pages:
                page.goto(f"{hub.url}{path}")
                page.wait_for_load_state("networkidle")
                found[f"{name} ({scheme})"], upstream[f"{name} ({scheme})"] = serious_violations(page, scheme)
            refuse(page, hub)
            found[f"refusal ({scheme})"], upstream[f"refusal ({scheme})"] = serious_violations(page, scheme)
        finally:
            context.close()
    with capsys.disabled():
        for name, found_there in upstream.items():
            for line in found_there:
                print(f"\n[JupyterHub chrome, not ours] {name}: {line}")
    assert not any(found.values()), {k: v for k, v in found.items() if v}


def test_a_running_verifications_page_reloads_once_it_moves_on(chromium, hub):
    """The page polls its verification (no timed refresh) and shows the new state once there is one."""
    from playwright.sync_api import expect

    page = new_page(chromium, hub, "dave", DESKTOP)
    try:
        with session_log(hub) as log:
            v = log.create_verification(username="dave", group="lab-vision", notebook="results/mean.ipynb",
                                        offering="enterprise/a100")
            log.update_verification(v.id, state="running")
            page.goto(f"{hub.url}{PORTAL}verifications/{v.id}")
            expect(page.locator("#verification-state")).to_have_text("running")
            log.update_verification(v.id, state="error", message="the server did not start")
        expect(page.locator("#verification-message")).to_have_text("the server did not start", timeout=15_000)
    finally:
        page.context.close()


#: The lowest contrast ratio (WCAG) of the charts' text against the page's background; None without text.
CHART_TEXT_CONTRAST = """() => {
    const rgb = (c) => (c.match(/[\\d.]+/g) || []).slice(0, 3).map(Number);
    const lum = (c) => { const [r, g, b] = rgb(c).map((v) => { v /= 255;
        return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
        return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
    const bg = lum(getComputedStyle(document.body).backgroundColor);
    const ratios = [...document.querySelectorAll(".vega-chart svg text")].filter((t) => t.textContent.trim())
        .map((t) => { const l = lum(getComputedStyle(t).fill);
            return (Math.max(l, bg) + 0.05) / (Math.min(l, bg) + 0.05); });
    return ratios.length ? Math.min(...ratios) : null;
}"""
CHARTS_DRAWN = "() => [...document.querySelectorAll('.vega-chart')].every((c) => c.classList.contains('vega-ready'))"
CHARTS_DRAWN_IN = "(t) => [...document.querySelectorAll('.vega-chart')].every((c) => c.dataset.theme === t)"


@pytest.fixture(scope="module")
def charted(hub) -> Hub:
    """The hub with an hour of alice's this month: the admin's overview and usage pages draw charts."""
    for acct in accounting_on(hub):
        rid = acct.admit(username="alice", group="course-ml101", resource_class="community", model="rtx4090",
                         count=1, hours=1, price_per_hour=0.35)
        acct.mark_running(rid, month_start(utcnow()))
        acct.release(rid, "stopped", now=month_start(utcnow()) + timedelta(hours=1))
    return hub


def test_every_admin_portal_page_is_clean_and_readable_light_and_dark(chromium, charted):
    """axe on each of an admin's portal pages (budget forms, trust, audit, providers' bills, an error page) in
    the hub's light and dark theme; the charts' text readable on the page's background in both."""
    hub = charted
    require(importlib.util.find_spec("axe_playwright_python") is not None, "axe-playwright-python")
    found: dict[str, list[str]] = {}
    charts: dict[str, float | None] = {}
    for scheme in ("light", "dark"):
        context = chromium.new_context(viewport=DESKTOP, color_scheme=scheme)  # the hub's theme follows the system's
        context.set_default_timeout(60_000)
        try:
            page = context.new_page()
            login(page, hub.url, "admin", DEMO_ADMIN_PASSWORD)
            for p in ADMIN_PAGES:
                page.goto(f"{hub.url}{PORTAL}{p}")
                page.wait_for_load_state("networkidle")
                name = f"{p or 'overview'} ({scheme})"
                found[name], _ = serious_violations(page, scheme)
                if page.locator(".vega-chart").count():
                    page.wait_for_function(CHARTS_DRAWN)
                    charts[name] = page.evaluate(CHART_TEXT_CONTRAST)
        finally:
            context.close()
    assert not any(found.values()), {k: v for k, v in found.items() if v}
    assert "overview (dark)" in charts and "usage (dark)" in charts, charts
    assert all(r is not None and r >= 4.5 for r in charts.values()), charts


def test_the_hubs_toggle_draws_the_charts_again_in_its_theme(chromium, charted, tmp_path):
    """On the admin's overview (its spend chart), dark -> light -> dark; docs/dashboard-admin-dark.png."""
    hub = charted
    context = chromium.new_context(viewport=DESKTOP, color_scheme="dark")
    context.set_default_timeout(60_000)
    contrast: dict[str, float | None] = {}
    try:
        page = context.new_page()
        login(page, hub.url, "admin", DEMO_ADMIN_PASSWORD)
        page.goto(f"{hub.url}{PORTAL}")
        for theme in ("light", "dark"):
            page.locator("#dark-theme-toggle").click()
            page.wait_for_function(CHARTS_DRAWN_IN, arg=theme)
            contrast[theme] = page.evaluate(CHART_TEXT_CONTRAST)
        page.screenshot(path=str(docs_artifact("dashboard-admin-dark.png", tmp_path)), full_page=True)
    finally:
        context.close()
    assert all(r is not None and r >= 4.5 for r in contrast.values()), contrast


def test_the_spawn_pending_page_under_axe_light_and_dark(chromium, hub):
    """JupyterHub's /hub/spawn-pending/<user> while carol's launch waits (the module hub's pre-spawn gate): nothing
    serious, JupyterHub's own progress bar included (named by our spawn_pending.html; JupyterHub 6.1 leaves it
    unnamed, aria-progressbar-name)."""
    require(importlib.util.find_spec("axe_playwright_python") is not None, "axe-playwright-python")
    options = {"class": "community", "model": "rtx3090", "count": 1, "hours": 1, "group": "lab-vision"}
    found: dict[str, list[str]] = {}
    upstream: dict[str, list[str]] = {}
    with ThreadPoolExecutor(1) as pool:
        posted = pool.submit(hub.spawn, "carol", options)  # answers 202 after slow_spawn_timeout (10 s)
        deadline = time.monotonic() + 30
        while (hub.server_model("carol") or {}).get("pending") != "spawn":
            assert time.monotonic() < deadline and not posted.done(), "carol's launch never went pending"
            time.sleep(0.1)
        try:
            for scheme in ("light", "dark"):
                context = chromium.new_context(viewport=DESKTOP, color_scheme=scheme)
                try:
                    page = context.new_page()
                    login(page, hub.url, "carol", DEMO_USER_PASSWORD)
                    page.goto(f"{hub.url}/hub/spawn-pending/carol")
                    page.locator("#progress-bar").wait_for(state="attached")  # the pending page, not a redirect
                    found[scheme], upstream[scheme] = serious_violations(page, scheme)
                finally:
                    context.close()
        finally:
            (hub.workdir / "pending-gate").touch()
            assert posted.result().status_code in (201, 202)
    hub.wait_ready("carol")
    hub.stop_server("carol")
    assert not any(found.values()) and not any(upstream.values()), (found, upstream)
