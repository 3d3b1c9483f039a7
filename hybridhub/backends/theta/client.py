"""The HTTP client of Theta EdgeCloud's project API, as Theta's own client speaks it.

The contract (Theta's ``on-demand-api-mcp``, ``src/api/controller-client.ts``):

* a configurable base URL (a trailing ``/`` dropped); project-scoped paths
  ``/v1/projects/{project_id}/...`` with every id URL-encoded;
* the project key in the ``x-api-key`` header, never an ``Authorization`` header; JSON bodies;
* answers are an envelope ``{"status": "success", "body": ...}``; a failure is an HTTP error whose
  JSON carries ``message`` or ``error`` (else the text itself), or a 200 with ``status`` other than
  ``success``; a success without ``body`` is invalid; ``DELETE`` answers 204 with an empty body;
* an error's detail is cut at 4096 characters (then ``...``); a request gives up after 30 s.

Nothing here knows a field inside ``body``: that is :mod:`hybridhub.backends.theta.body`.  The key is
never in ``repr``, a log line or an error (an error echoing it has it replaced).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any
from urllib.parse import quote, urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

#: Longest error detail kept, as Theta's client cuts it.
MAX_ERROR_DETAIL = 4096
#: Longest span ``billing/usage`` answers for, in days (inclusive).
MAX_USAGE_DAYS = 366


class ThetaError(Exception):
    """Theta answered with an error (``status``: the HTTP status; None for a 200 whose status is not
    ``success`` or an invalid answer).  The message is Theta's detail, cut at :data:`MAX_ERROR_DETAIL`."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status

    @property
    def auth(self) -> bool:
        """The key was refused (401, 403)."""
        return self.status in (401, 403)


class ThetaTimeout(ThetaError):
    """Theta did not answer within the client's timeout (or could not be reached)."""


def error_detail(detail: Any, fallback: str) -> str:
    """``detail`` as text (JSON for a structure), cut at :data:`MAX_ERROR_DETAIL` characters plus ``...``."""
    if isinstance(detail, str):
        text = detail
    elif detail is None:
        text = fallback
    else:
        try:
            text = json.dumps(detail)
        except (TypeError, ValueError):
            text = fallback
    return text if len(text) <= MAX_ERROR_DETAIL else text[:MAX_ERROR_DETAIL] + "..."


def _parse(text: str) -> Any:
    try:
        return json.loads(text) if text else {}
    except ValueError:
        return text


def _failure_detail(data: Any, text: str) -> Any:
    if isinstance(data, dict):
        return data.get("message") or data.get("error") or text
    return text


def check_date(value: str) -> dt.date:
    """A ``YYYY-MM-DD`` date (ValueError otherwise)."""
    if not isinstance(value, str) or len(value) != 10:
        raise ValueError(f"not a YYYY-MM-DD date: {value!r}")
    return dt.date.fromisoformat(value)


class ThetaClient:
    """One project of Theta EdgeCloud's API (``base_url``, ``project_id``, ``api_key``)."""

    def __init__(self, base_url: str, project_id: str, api_key: str, *, timeout: float = 30.0):
        if not base_url or not project_id or not api_key:
            raise ValueError("Theta needs a base URL, a project id and an API key")
        self.base_url = base_url.rstrip("/")
        self.project_id = project_id
        self._api_key = api_key
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"ThetaClient({self.base_url!r}, project {self.project_id!r})"

    def project_path(self, suffix: str) -> str:
        """``/v1/projects/<project id, encoded>/<suffix>``."""
        return f"/v1/projects/{quote(self.project_id, safe='')}/{suffix}"

    def _scrub(self, text: str) -> str:
        return text.replace(self._api_key, "[api key]") if self._api_key in text else text

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        """Send one request; the envelope's ``body`` (None for a 204), or :class:`ThetaError`."""
        req = HTTPRequest(
            self.base_url + path, method=method,
            headers={"Content-Type": "application/json", "x-api-key": self._api_key},
            body=None if body is None else json.dumps(body),
            allow_nonstandard_methods=body is None and method == "POST",
            connect_timeout=self.timeout, request_timeout=self.timeout, follow_redirects=False,
        )
        try:
            resp = await AsyncHTTPClient().fetch(req, raise_error=False)
        except (OSError, HTTPClientError) as e:
            raise ThetaTimeout(f"Controller API unreachable: {type(e).__name__}") from None
        if resp.code == 599:  # tornado: timeout or connection failure
            raise ThetaTimeout(f"Controller API unreachable: {type(resp.error).__name__}")
        text = resp.body.decode("utf-8", "replace") if resp.body else ""
        data = _parse(text)
        if not 200 <= resp.code < 300:
            detail = error_detail(_failure_detail(data, text), resp.reason or "")
            raise ThetaError(self._scrub(f"Controller API error ({resp.code}): {detail}"), resp.code)
        if resp.code == 204 and not text:
            return None
        if not isinstance(data, dict):
            raise ThetaError("Controller API returned an invalid response")
        if data.get("status") != "success":
            detail = error_detail(data.get("message") or data.get("error"), "unknown error")
            raise ThetaError(self._scrub(f"Controller API error: {detail}"))
        if "body" not in data:
            raise ThetaError("Controller API returned a success response without a body")
        return data["body"]

    # --- the project's endpoints (one method per call of Theta's client) ----------------------

    async def list_gpu_resources(self) -> Any:
        return await self.request("GET", self.project_path("gpu-resources"))

    async def get_gpu_resource(self, resource_id: str, region: str | None = None) -> Any:
        query = f"?region={quote(region, safe='')}" if region else ""
        return await self.request("GET", self.project_path(f"gpu-resources/{quote(resource_id, safe='')}{query}"))

    async def list_gpu_deployment_templates(self) -> Any:
        return await self.request("GET", self.project_path("gpu-deployment-templates"))

    async def list_gpu_deployments(self) -> Any:
        return await self.request("GET", self.project_path("gpu-deployments"))

    def _deployment(self, deployment_id: str, tail: str = "") -> str:
        return self.project_path(f"gpu-deployments/{quote(deployment_id, safe='')}{tail}")

    async def get_gpu_deployment(self, deployment_id: str) -> Any:
        return await self.request("GET", self._deployment(deployment_id))

    async def create_gpu_deployment(self, body: dict) -> Any:
        return await self.request("POST", self.project_path("gpu-deployments"), body)

    async def start_gpu_deployment(self, deployment_id: str) -> Any:
        return await self.request("POST", self._deployment(deployment_id, "/start"))

    async def stop_gpu_deployment(self, deployment_id: str) -> Any:
        return await self.request("POST", self._deployment(deployment_id, "/stop"))

    async def delete_gpu_deployment(self, deployment_id: str) -> Any:
        return await self.request("DELETE", self._deployment(deployment_id))

    async def get_gpu_deployment_events(self, deployment_id: str) -> Any:
        return await self.request("GET", self._deployment(deployment_id, "/events"))

    async def get_gpu_deployment_logs(self, deployment_id: str) -> Any:
        return await self.request("GET", self._deployment(deployment_id, "/logs"))

    async def get_billing_balance(self) -> Any:
        return await self.request("GET", self.project_path("billing/balance"))

    async def get_billing_usage(self, start_date: str | None = None, end_date: str | None = None) -> Any:
        """Usage for inclusive ``YYYY-MM-DD`` dates, at most :data:`MAX_USAGE_DAYS` days (ValueError)."""
        if start_date and end_date:
            span = (check_date(end_date) - check_date(start_date)).days + 1
            if not 1 <= span <= MAX_USAGE_DAYS:
                raise ValueError(f"billing usage spans 1 to {MAX_USAGE_DAYS} days, not {span}")
        query = urlencode({k: check_date(v).isoformat() for k, v in
                           (("start_date", start_date), ("end_date", end_date)) if v})
        return await self.request("GET", self.project_path("billing/usage" + (f"?{query}" if query else "")))

    async def list_billing_top_ups(self, page: int | None = None, number: int | None = None) -> Any:
        if number is not None and not 1 <= number <= 100:
            raise ValueError("top-ups are listed 1 to 100 per page")
        query = urlencode({k: str(v) for k, v in (("page", page), ("number", number)) if v is not None})
        return await self.request("GET", self.project_path("billing/top-ups" + (f"?{query}" if query else "")))

    async def get_billing_pricing(self) -> Any:
        return await self.request("GET", self.project_path("billing/pricing"))
