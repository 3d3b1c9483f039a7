"""Course sessions in the portal: schedule, start now, end, cancel; the page and the REST API.

Who may do what: an instructor holds ``custom:courses:manage!group=<course>`` (an
unfiltered ``custom:courses:manage``, or ``custom:quota:admin``, covers every course)
and schedules and runs that course's sessions; a member of the course sees its
sessions.  "Start now" asks the scheduler service and waits a few seconds for its
answer: ``200`` with the running session, ``409`` (``403`` with no usable budget) with
how many students the budget covers (``students``, ``fit``, ``each``, ``left``,
``unit``) -- nothing is started then -- or ``202`` if the scheduler has not answered yet.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any
from urllib.parse import quote

from tornado import web

from hybridhub.accounting.courses import MANAGE_SCOPE, CourseError, CourseSchedule, CourseSessionInfo
from hybridhub.web.base import ApiError, PortalHandler, forbidden, path_id, responses, string_field

#: How long "start now" waits for the scheduler's answer before replying 202.
START_WAIT_S = float(os.environ.get("HYBRIDHUB_COURSE_START_WAIT", "15"))


def managed_groups(scopes: Any) -> set[str] | None:
    """Course groups the scopes let one manage; None means every course."""
    groups: set[str] = set()
    for scope in scopes or ():
        base, _, filt = scope.partition("!")
        if base != MANAGE_SCOPE:
            continue
        kind, _, value = filt.partition("=")
        if not filt:
            return None
        if kind == "group" and value:
            groups.add(value)
    return groups


class CourseHandler(PortalHandler):
    """Base of the course handlers: the schedule and who manages which course."""

    @property
    def schedule(self) -> CourseSchedule:
        """The course schedule on the portal's database (built once per app)."""
        settings = self.application.settings
        if "course_schedule" not in settings:
            from hybridhub.catalog import load_catalog

            images = [i for i in os.environ.get("HYBRIDHUB_COURSE_IMAGES", "").split(",") if i]
            settings["course_schedule"] = CourseSchedule(
                self.accounting, load_catalog(path=os.environ.get("HYBRIDHUB_CATALOG") or None),
                allowed_images=images,
            )
        return settings["course_schedule"]

    def manages(self, group: str) -> bool:
        """Whether the caller may schedule and run ``group``'s sessions."""
        managed = managed_groups(self.current_user.get("scopes"))
        return self.viewer.is_admin or managed is None or group in managed

    def visible_groups(self) -> set[str] | None:
        """Courses whose sessions the caller sees (managed or member of); None: all."""
        managed = managed_groups(self.current_user.get("scopes"))
        if self.viewer.is_admin or managed is None:
            return None
        return managed | set(self.viewer.groups)

    def session(self, session_id: str, *, manage: bool) -> CourseSessionInfo:
        """The session (404 if unknown or not visible; 403 if it may not be managed)."""
        try:
            info = self.schedule.get(path_id(session_id, "course session"))
        except CourseError as e:
            raise ApiError(e.status, str(e)) from None
        visible = self.visible_groups()
        if visible is not None and info.group not in visible:
            raise ApiError(404, f"no course session {session_id}")
        if manage and not self.manages(info.group):
            raise forbidden(f"run the sessions of {info.group!r}")
        return info

    def body(self) -> tuple[dict[str, Any], bool]:
        """The input and whether it came from a form; a JSON body is checked against the
        document's schema for it."""
        ctype = self.request.headers.get("Content-Type", "")
        if ctype.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            return self.form_body(), True
        return self.checked_json_body(CREATE_BODY), False

    def answer(self, info: CourseSessionInfo, message: str, status: int = 200) -> None:
        """JSON for the API; back to the courses page (with the message) for a form."""
        if self.wants_json():
            self.write_json(self.describe(info), status=status)
        else:
            self.redirect(f"{self.prefix}courses?done={quote(message)}", status=303)

    def describe(self, info: CourseSessionInfo) -> dict[str, Any]:
        """The session as the API shows it; its managers also see every seat."""
        out = info.as_json()
        if self.manages(info.group):
            out["seat_list"] = [
                {"username": s.username, "state": s.state, "error": s.error}
                for s in self.schedule.seats(info.id)
            ]
        return out


class CoursesHandler(CourseHandler):
    """``GET /courses`` (page), ``GET /api/courses``; ``POST`` schedules a session."""

    @web.authenticated
    async def get(self) -> None:
        visible = self.visible_groups()
        sessions = await asyncio.to_thread(self.schedule.list, visible)
        if self.wants_json():
            self.write_json({"sessions": [self.describe(s) for s in sessions]})
            return
        managed = managed_groups(self.current_user.get("scopes"))
        groups = sorted(self.viewer.groups | (managed or set()))
        self.render_page(
            "courses.html", sessions=sessions, manages=self.manages,
            managed=[g for g in groups if self.manages(g)],
            offerings=self.schedule.catalog.all_offerings(),
            seats={s.id: self.schedule.seats(s.id) for s in sessions if self.manages(s.group)},
            done=self.get_argument("done", ""),
        )

    @web.authenticated
    async def post(self) -> None:
        body, from_form = self.body()
        group = string_field(body, "group", max_length=255)
        if not self.manages(group):
            raise forbidden(f"schedule sessions for {group!r}")
        if from_form and "offering" in body:
            body["class"], _, body["model"] = str(body.pop("offering")).partition("/")
        count = body.get("count", 1)
        if from_form and isinstance(count, str) and count.strip().isdigit():
            count = int(count)
        try:
            info = await asyncio.to_thread(
                self.schedule.create, group=group,
                resource_class=string_field(body, "class"), model=string_field(body, "model"),
                count=count, starts_at=body.get("starts_at"), ends_at=body.get("ends_at"),
                image=string_field(body, "image", required=False, max_length=512) or "",
                title=string_field(body, "title", required=False, max_length=255) or "",
                created_by=self.viewer.name,
            )
        except CourseError as e:
            raise ApiError(e.status, str(e), getattr(e, "field", None)) from None
        self.answer(info, f"scheduled {info.label}", status=201)


class SessionHandler(CourseHandler):
    """``GET /api/courses/{id}``: one session (its seats for its managers)."""

    @web.authenticated
    async def get(self, session_id: str) -> None:
        info = await asyncio.to_thread(self.session, session_id, manage=False)
        self.write_json(self.describe(info))


class SessionAction(CourseHandler):
    """``POST /api/courses/{id}/{start,end,cancel}`` (and the same from the page's forms)."""

    @web.authenticated
    async def post(self, session_id: str, action: str) -> None:
        info = await asyncio.to_thread(self.session, session_id, manage=True)
        act = {"start": self.schedule.request_start, "end": self.schedule.end_now,
               "cancel": self.schedule.cancel}[action]
        try:
            info = await asyncio.to_thread(act, info.id)
        except CourseError as e:
            raise ApiError(e.status, str(e)) from None
        if action != "start":
            self.answer(info, f"{action}: {info.label}")
            return
        deadline = asyncio.get_running_loop().time() + START_WAIT_S
        while info.state != "running" and info.start_requested:
            if asyncio.get_running_loop().time() > deadline:
                self.answer(info, f"start requested: {info.label}", status=202)
                return
            await asyncio.sleep(0.2)
            info = await asyncio.to_thread(self.schedule.get, info.id)
        if info.state == "running":
            self.answer(info, f"started {info.label} for {sum(info.seats.values())} students")
            return
        # the class did not fit (ClassDoesNotFit: 409, or 403 with no usable budget)
        refusal = dict(info.refusal or {"status": 409, "message": info.message})
        if self.wants_json():
            self.write_json({**refusal, "field": None}, status=refusal["status"])
        else:
            self.redirect(f"{self.prefix}courses?done={quote(refusal['message'])}", status=303)


handlers: list[tuple[str, type]] = [
    ("courses", CoursesHandler),
    ("api/courses", CoursesHandler),
    (r"api/courses/(\d+)", SessionHandler),
    (r"(?:api/)?courses/(\d+)/(start|end|cancel)", SessionAction),
]

_SESSION = {
    "type": "object",
    "required": ["id", "group", "title", "class", "model", "count", "image", "starts_at",
                 "ends_at", "state", "message", "seats"],
    "properties": {
        "id": {"type": "integer"}, "group": {"type": "string"}, "title": {"type": "string"},
        "class": {"type": "string"}, "model": {"type": "string"}, "count": {"type": "integer"},
        "image": {"type": "string", "description": "empty: the offering's own image"},
        "starts_at": {"type": "string", "format": "date-time"},
        "ends_at": {"type": "string", "format": "date-time"},
        "state": {"type": "string", "enum": ["scheduled", "running", "ending", "ended",
                                              "cancelled", "refused"]},
        "message": {"type": "string"},
        "seats": {"type": "object", "additionalProperties": {"type": "integer"},
                  "description": "students per seat state (pending, starting, ready, ...)"},
        "seat_list": {"type": "array", "items": {"type": "object"}},
        "refusal": {"type": ["object", "null"]},
    },
}
#: The refusal of "start now" when the budget does not cover the class: an error body
#: (status, message, field) with the numbers.
_REFUSAL = {"allOf": [{"$ref": "#/components/schemas/Error"}, {
    "type": "object",
    "required": ["students", "fit", "each", "left", "unit"],
    "properties": {
        "students": {"type": "integer"}, "fit": {"type": "integer"},
        "each": {"type": "number"}, "left": {"type": "number"}, "unit": {"type": "string"},
    },
}]}
schemas: dict[str, Any] = {"CourseSession": _SESSION, "ClassDoesNotFit": _REFUSAL}

_ONE = {"description": "the session", "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/CourseSession"}}}}
_ID = [{"name": "id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}}]
#: ``POST /api/courses``'s body: the document shows it, the handler checks JSON input against it.
CREATE_BODY: dict[str, Any] = {
    "type": "object", "required": ["group", "class", "model", "count", "starts_at", "ends_at"],
    "properties": {"group": {"type": "string"}, "title": {"type": "string"},
                   "class": {"type": "string"}, "model": {"type": "string"},
                   "count": {"type": "integer", "minimum": 1,
                             "description": "accelerators per student"},
                   "image": {"type": "string"},
                   "starts_at": {"type": "string", "format": "date-time"},
                   "ends_at": {"type": "string", "format": "date-time"}}}
_ERROR = {"$ref": "#/components/schemas/Error"}

openapi_paths: dict[str, Any] = {
    "/api/courses": {
        "get": {
            "summary": "Course sessions the caller manages or attends",
            "operationId": "listCourseSessions",
            "responses": responses({"description": "sessions", "content": {
                "application/json": {"schema": {"type": "object", "properties": {
                    "sessions": {"type": "array",
                                 "items": {"$ref": "#/components/schemas/CourseSession"}}}}}}},
                403),
        },
        "post": {
            "summary": "Schedule a session: every student of the course on one offering",
            "operationId": "createCourseSession",
            "requestBody": {"required": True, "content": {"application/json": {"schema": CREATE_BODY}}},
            "responses": {**responses(_ONE, 400, 403, 409, 413), "201": _ONE},
        },
    },
    "/api/courses/{id}": {"get": {
        "summary": "One course session (with every seat, for its instructors)",
        "operationId": "getCourseSession", "parameters": _ID,
        "responses": responses(_ONE, 403, 404),
    }},
    "/api/courses/{id}/start": {"post": {
        "summary": "Start now: admit the whole class, then start every student's server",
        "operationId": "startCourseSession", "parameters": _ID,
        "responses": {
            **responses(_ONE, 403, 404), "202": _ONE,
            "409": {"description": "the budget does not cover every student (the numbers), or "
                                   "the session is not scheduled or may not start now; "
                                   "nothing started",
                    "content": {"application/json": {"schema": {"anyOf": [
                        {"$ref": "#/components/schemas/ClassDoesNotFit"}, _ERROR]}}}},
        },
    }},
    "/api/courses/{id}/end": {"post": {
        "summary": "End a running session now (servers stopped, reservations released)",
        "operationId": "endCourseSession", "parameters": _ID,
        "responses": responses(_ONE, 403, 404, 409),
    }},
    "/api/courses/{id}/cancel": {"post": {
        "summary": "Cancel a session that has not started",
        "operationId": "cancelCourseSession", "parameters": _ID,
        "responses": responses(_ONE, 403, 404, 409),
    }},
}
