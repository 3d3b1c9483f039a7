"""Compare a notebook's saved outputs with the outputs of a fresh run, cell by cell.

Pure functions over nbformat-4 notebooks (``dict`` or ``NotebookNode``); no I/O.
:func:`compare_notebooks` returns a JSON-ready report (``format`` :data:`REPORT_FORMAT`)
saying, for every cell, whether the outputs saved in the notebook (``original``) match
those of the re-run (``rerun``), and for each difference which output, what was saved
and what came out.

How outputs are compared:

- ``stream`` outputs are joined per stream (kernels split them differently); stdout is
  compared, stderr only when :attr:`Tolerance.compare_stderr` is set (it holds warnings
  with host-specific paths);
- ``execute_result`` and ``display_data`` are compared per MIME type: text types
  (``text/*``, JSON) as text with numbers, binary ones (images) exactly unless listed in
  :attr:`Tolerance.skip_mimetypes`;
- ``error`` outputs by exception name and message (not the traceback);
- text with numbers: the text between numbers must be equal (trailing spaces ignored,
  :attr:`Tolerance.ignore_patterns` blanked out), and each number must be within
  ``rel_tol``/``abs_tol`` of the saved one (``math.isclose``);
- execution counts are not compared; cells never run in the original are skipped.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

REPORT_FORMAT = "hybridhub-verification/1"
#: A number in text: integers, decimals, exponents, and nan/inf.
NUMBER = re.compile(
    r"(?<![\w.])[-+]?(?:(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?|nan|inf(?:inity)?)(?![\w])",
    re.IGNORECASE,
)
#: What a memory address looks like in a repr (``<object at 0x7f3a...>``): differs each run.
ADDRESS = r"\b0x[0-9a-fA-F]{6,}\b"
SNIPPET = 160


@dataclass(frozen=True)
class Tolerance:
    """How close a re-run must come to the saved outputs."""

    rel_tol: float = 1e-6
    abs_tol: float = 1e-9
    compare_stderr: bool = False
    skip_mimetypes: tuple[str, ...] = ()
    ignore_patterns: tuple[str, ...] = (ADDRESS,)

    def __post_init__(self):
        for name in ("rel_tol", "abs_tol"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                value >= 0 and math.isfinite(value)
            ):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        for pattern in self.ignore_patterns:
            re.compile(pattern)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Tolerance:
        """Build from a JSON body or form; unknown keys are a ValueError naming them."""
        data = dict(data or {})
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown tolerance setting {unknown[0]!r}")
        for key in ("skip_mimetypes", "ignore_patterns"):
            if key in data:
                data[key] = tuple(data[key])
        for key in ("rel_tol", "abs_tol"):
            if key in data and isinstance(data[key], str):
                try:
                    data[key] = float(data[key])
                except ValueError:
                    raise ValueError(f"{key} must be a number, got {data[key]!r}") from None
        return cls(**data)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        d = asdict(self)
        d["skip_mimetypes"] = list(self.skip_mimetypes)
        d["ignore_patterns"] = list(self.ignore_patterns)
        return d


@dataclass
class Difference:
    """One way a cell's re-run outputs differ from the saved ones."""

    what: str
    kind: str
    expected: str | None
    got: str | None
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


@dataclass
class CellResult:
    """The comparison of one cell."""

    index: int
    cell_type: str
    status: str
    source: str
    cell_id: str | None = None
    differences: list[Difference] = field(default_factory=list)
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        d = asdict(self)
        d["differences"] = [x.as_dict() for x in self.differences]
        return d


def _snippet(text: Any, n: int = SNIPPET) -> str | None:
    if text is None:
        return None
    text = str(text)
    return text if len(text) <= n else text[: n - 1] + "…"


def _text(value: Any) -> str:
    """nbformat stores text as a string or a list of lines; JSON data as an object."""
    if isinstance(value, list):
        return "".join(str(v) for v in value)
    if isinstance(value, (dict, int, float, bool)) or value is None:
        return json.dumps(value, sort_keys=True)
    return str(value)


def _parse_number(token: str) -> float:
    return float(token.replace("infinity", "inf").replace("Infinity", "inf"))


def _normalise(text: str, tol: Tolerance) -> str:
    for pattern in tol.ignore_patterns:
        text = re.sub(pattern, "<ignored>", text)
    return "\n".join(line.rstrip() for line in text.strip("\n").split("\n"))


def _numbers_close(a: float, b: float, tol: Tolerance) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return math.isclose(a, b, rel_tol=tol.rel_tol, abs_tol=tol.abs_tol)


def compare_text(expected: str, got: str, tol: Tolerance, what: str = "text") -> Difference | None:
    """None if ``got`` matches ``expected`` within ``tol``, else the first difference."""
    exp, act = _normalise(expected, tol), _normalise(got, tol)
    if exp == act:
        return None
    exp_words, act_words = NUMBER.split(exp), NUMBER.split(act)
    exp_nums, act_nums = NUMBER.findall(exp), NUMBER.findall(act)
    if exp_words != act_words or len(exp_nums) != len(act_nums):
        return Difference(what, "text", _snippet(expected), _snippet(got), _first_divergence(exp, act))
    for i, (a, b) in enumerate(zip(exp_nums, act_nums, strict=True)):
        x, y = _parse_number(a), _parse_number(b)
        if not _numbers_close(x, y, tol):
            scale = max(abs(x), abs(y))
            rel = abs(x - y) / scale if scale and math.isfinite(scale) else float("inf")
            return Difference(
                what, "number", _snippet(expected), _snippet(got),
                f"number {i + 1}: saved {a}, re-run {b} (difference {abs(x - y):.3g}, "
                f"relative {rel:.3g}; allowed rel {tol.rel_tol:g}, abs {tol.abs_tol:g})",
            )
    return None


def _first_divergence(a: str, b: str) -> str:
    n = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    line = a.count("\n", 0, n) + 1
    return f"text differs from line {line}: saved {a[n:n + 40]!r}, re-run {b[n:n + 40]!r}"


def _view(outputs: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """A cell's outputs as comparable parts: joined streams, rich results, errors."""
    streams: dict[str, str] = {}
    results: list[dict[str, Any]] = []
    errors: list[tuple[str, str]] = []
    for out in outputs:
        kind = out.get("output_type")
        if kind == "stream":
            name = out.get("name", "stdout")
            streams[name] = streams.get(name, "") + _text(out.get("text", ""))
        elif kind in ("execute_result", "display_data"):
            results.append(dict(out.get("data") or {}))
        elif kind == "error":
            errors.append((str(out.get("ename", "")), str(out.get("evalue", ""))))
    return {"streams": streams, "results": results, "errors": errors}


def _is_text_mime(mime: str) -> bool:
    return mime.startswith("text/") or mime.endswith("json") or mime.endswith("+xml")


def _compare_results(exp: list[dict], act: list[dict], tol: Tolerance) -> list[Difference]:
    diffs: list[Difference] = []
    if len(exp) != len(act):
        diffs.append(
            Difference("results", "count", str(len(exp)), str(len(act)),
                       f"{len(exp)} result(s) saved, {len(act)} from the re-run")
        )
    for i, (e, a) in enumerate(zip(exp, act, strict=False)):
        for mime in sorted(set(e) | set(a)):
            if mime in tol.skip_mimetypes:
                continue
            what = f"result {i + 1} {mime}"
            if mime not in a or mime not in e:
                diffs.append(Difference(what, "missing" if mime not in a else "extra",
                                        _snippet(_text(e.get(mime))), _snippet(_text(a.get(mime)))))
            elif _is_text_mime(mime):
                d = compare_text(_text(e[mime]), _text(a[mime]), tol, what)
                if d:
                    diffs.append(d)
            elif _text(e[mime]).strip() != _text(a[mime]).strip():
                diffs.append(Difference(what, "binary", f"{len(_text(e[mime]))} bytes (base64)",
                                        f"{len(_text(a[mime]))} bytes (base64)", "contents differ"))
    return diffs


def compare_outputs(
    expected: Iterable[Mapping[str, Any]], got: Iterable[Mapping[str, Any]], tol: Tolerance
) -> list[Difference]:
    """Every difference between a cell's saved outputs and its re-run outputs."""
    exp, act = _view(expected), _view(got)
    diffs: list[Difference] = []
    names = ["stdout"] + (["stderr"] if tol.compare_stderr else [])
    for name in names:
        e, a = exp["streams"].get(name, ""), act["streams"].get(name, "")
        d = compare_text(e, a, tol, name)
        if d:
            diffs.append(d)
    diffs += _compare_results(exp["results"], act["results"], tol)
    if exp["errors"] != act["errors"]:
        e = "; ".join(f"{n}: {v}" for n, v in exp["errors"]) or None
        a = "; ".join(f"{n}: {v}" for n, v in act["errors"]) or None
        detail = "the re-run raised an error" if a and not e else (
            "the saved run raised an error, the re-run did not" if e and not a else "different errors"
        )
        diffs.append(Difference("error", "error", _snippet(e), _snippet(a), detail))
    return diffs


def _cells(nb: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    cells = nb.get("cells")
    if not isinstance(cells, list):
        raise ValueError("not an nbformat 4 notebook: no 'cells' list")
    return cells


def compare_notebooks(
    original: Mapping[str, Any],
    rerun: Mapping[str, Any],
    tolerance: Tolerance | None = None,
    *,
    notebook: str = "",
) -> dict[str, Any]:
    """The cell-by-cell report of ``rerun`` against the outputs saved in ``original``.

    ``verdict`` is ``passed`` when every compared cell matches, else ``failed``; the
    summary lists the indices (0-based) of the differing cells.
    """
    tol = tolerance or Tolerance()
    saved, fresh = _cells(original), _cells(rerun)
    results: list[CellResult] = []
    for index, cell in enumerate(saved):
        source = _text(cell.get("source", ""))
        first_line = _snippet(source.strip().split("\n", 1)[0], 80) or ""
        res = CellResult(index, str(cell.get("cell_type", "")), "match", first_line, cell.get("id"))
        results.append(res)
        if res.cell_type != "code":
            res.status, res.note = "skipped", "not a code cell"
            continue
        if cell.get("execution_count") is None and not cell.get("outputs"):
            res.status, res.note = "skipped", "never run in the saved notebook"
            continue
        other = fresh[index] if index < len(fresh) else None
        if other is None:
            res.status = "differs"
            res.differences.append(Difference("cell", "missing", first_line, None, "not in the re-run"))
            continue
        if _text(other.get("source", "")) != source:
            res.status = "differs"
            res.differences.append(Difference("source", "text", _snippet(source),
                                              _snippet(_text(other.get("source", ""))),
                                              "the cell's code changed"))
            continue
        res.differences = compare_outputs(cell.get("outputs") or [], other.get("outputs") or [], tol)
        if res.differences:
            res.status = "differs"
    compared = [r for r in results if r.status != "skipped"]
    differing = [r.index for r in results if r.status == "differs"]
    return {
        "format": REPORT_FORMAT,
        "notebook": notebook,
        "verdict": "failed" if differing else "passed",
        "tolerance": tol.as_dict(),
        "summary": {
            "cells": len(saved),
            "compared": len(compared),
            "matched": len(compared) - len(differing),
            "differing": differing,
            "skipped": len(results) - len(compared),
            "extra_cells_in_rerun": max(0, len(fresh) - len(saved)),
        },
        "cells": [r.as_dict() for r in results],
    }


def strip_outputs(nb: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``nb`` with every code cell's outputs and execution count cleared."""
    out = json.loads(json.dumps(nb))
    for cell in out.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
    return out
