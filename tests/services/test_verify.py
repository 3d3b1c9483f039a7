"""hybridhub.services.notebook_compare: the cell-by-cell comparison of saved outputs with a re-run (pure, no I/O)."""

from __future__ import annotations

import copy

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from hybridhub.services.notebook_compare import REPORT_FORMAT, Tolerance, compare_notebooks, compare_text, strip_outputs


def stream(text: str, name: str = "stdout"):
    return new_output("stream", name=name, text=text)


def result(text: str, **more):
    return new_output("execute_result", data={"text/plain": text, **more}, execution_count=1)


def notebook(*cells):
    return new_notebook(cells=list(cells))


def code(source: str, *outputs, count: int | None = 1):
    return new_code_cell(source, outputs=list(outputs), execution_count=count)


BASE = notebook(
    new_markdown_cell("# Training"),
    code("print('loss', 0.123456789)", stream("loss 0.123456789\n")),
    code("x = 2 ** 10\nx", result("1024")),
    code("import math\nmath.pi", result("3.141592653589793")),
)


def test_identical_notebooks_pass_and_markdown_is_skipped():
    report = compare_notebooks(BASE, copy.deepcopy(BASE), notebook="train.ipynb")
    assert report["format"] == REPORT_FORMAT and report["notebook"] == "train.ipynb"
    assert report["verdict"] == "passed"
    assert report["summary"] == {
        "cells": 4, "compared": 3, "matched": 3, "differing": [], "skipped": 1, "extra_cells_in_rerun": 0,
    }
    assert [c["status"] for c in report["cells"]] == ["skipped", "match", "match", "match"]


def test_float_within_tolerance_matches_and_outside_is_the_exact_cell():
    rerun = copy.deepcopy(BASE)
    rerun.cells[3].outputs[0]["data"]["text/plain"] = "3.1415926535897936"  # last digits
    assert compare_notebooks(BASE, rerun)["verdict"] == "passed"
    rerun.cells[3].outputs[0]["data"]["text/plain"] = "3.15"
    report = compare_notebooks(BASE, rerun)
    assert report["verdict"] == "failed" and report["summary"]["differing"] == [3]
    (diff,) = report["cells"][3]["differences"]
    assert diff["kind"] == "number" and diff["what"] == "result 1 text/plain"
    assert diff["expected"] == "3.141592653589793" and diff["got"] == "3.15"
    assert "saved 3.141592653589793, re-run 3.15" in diff["detail"]


def test_tolerance_is_configurable():
    rerun = copy.deepcopy(BASE)
    rerun.cells[1].outputs[0]["text"] = "loss 0.1235\n"
    assert compare_notebooks(BASE, rerun)["summary"]["differing"] == [1]
    loose = Tolerance(rel_tol=1e-3)
    assert compare_notebooks(BASE, rerun, loose)["verdict"] == "passed"


def test_changed_text_and_integer_are_reported():
    rerun = copy.deepcopy(BASE)
    rerun.cells[1].outputs[0]["text"] = "LOSS 0.123456789\n"
    rerun.cells[2].outputs[0]["data"]["text/plain"] = "1025"
    report = compare_notebooks(BASE, rerun)
    assert report["summary"]["differing"] == [1, 2]
    assert report["cells"][1]["differences"][0]["kind"] == "text"
    assert "line 1" in report["cells"][1]["differences"][0]["detail"]
    assert report["cells"][2]["differences"][0]["kind"] == "number"


def test_streams_split_differently_still_match():
    saved = notebook(code("for i in range(3): print(i)", stream("0\n1\n2\n")))
    rerun = notebook(code("for i in range(3): print(i)", stream("0\n"), stream("1\n2\n")))
    assert compare_notebooks(saved, rerun)["verdict"] == "passed"


def test_stderr_ignored_unless_asked():
    saved = notebook(code("warn()", stream("/home/a/x.py:1: Warning\n", "stderr")))
    rerun = notebook(code("warn()", stream("/opt/conda/x.py:1: Warning\n", "stderr")))
    assert compare_notebooks(saved, rerun)["verdict"] == "passed"
    assert compare_notebooks(saved, rerun, Tolerance(compare_stderr=True))["verdict"] == "failed"


def test_errors_compared_by_name_and_message():
    err = new_output("error", ename="ZeroDivisionError", evalue="division by zero", traceback=["tb"])
    saved = notebook(code("1/0", err))
    rerun = copy.deepcopy(saved)
    rerun.cells[0].outputs[0]["traceback"] = ["another traceback"]
    assert compare_notebooks(saved, rerun)["verdict"] == "passed"
    ok = notebook(code("1/0", result("inf")))
    report = compare_notebooks(ok, saved)
    kinds = {d["kind"] for d in report["cells"][0]["differences"]}
    assert kinds == {"count", "error"}
    assert any(d["detail"] == "the re-run raised an error" for d in report["cells"][0]["differences"])


def test_memory_addresses_are_ignored():
    saved = notebook(code("object()", result("<object object at 0x7f3a1c2d4e50>")))
    rerun = notebook(code("object()", result("<object object at 0x7ffe00112233>")))
    assert compare_notebooks(saved, rerun)["verdict"] == "passed"


def test_images_compared_exactly_unless_skipped():
    saved = notebook(code("plot()", result("<Figure>", **{"image/png": "iVBORw0KGgoAAAA"})))
    rerun = notebook(code("plot()", result("<Figure>", **{"image/png": "iVBORw0KGgoBBBB"})))
    report = compare_notebooks(saved, rerun)
    assert report["cells"][0]["differences"][0]["kind"] == "binary"
    assert compare_notebooks(saved, rerun, Tolerance(skip_mimetypes=("image/png",)))["verdict"] == "passed"


def test_cells_never_run_are_skipped_and_missing_cells_differ():
    saved = notebook(code("slow()", count=None), code("1", result("1")))
    rerun = notebook(code("slow()", result("done")))
    report = compare_notebooks(saved, rerun)
    assert [c["status"] for c in report["cells"]] == ["skipped", "differs"]
    assert report["cells"][1]["differences"][0]["kind"] == "missing"


def test_changed_source_differs():
    rerun = copy.deepcopy(BASE)
    rerun.cells[2].source = "x = 3"
    report = compare_notebooks(BASE, rerun)
    assert report["cells"][2]["differences"][0]["what"] == "source"


def test_numbers_inside_words_and_nan_inf():
    tol = Tolerance()
    assert compare_text("layer1 nan inf", "layer1 nan inf", tol) is None
    assert compare_text("x = nan", "x = 0.0", tol).kind == "number"
    assert compare_text("[1.0, 2.0e-03]", "[1.0000000001, 0.002]", tol) is None
    assert compare_text("a 1 b", "a 1 2 b", tol).kind == "text"


def test_tolerance_from_dict_validates():
    t = Tolerance.from_dict({"rel_tol": "0.01", "skip_mimetypes": ["image/png"]})
    assert t.rel_tol == 0.01 and t.skip_mimetypes == ("image/png",)
    with pytest.raises(ValueError, match="unknown tolerance setting 'bogus'"):
        Tolerance.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="rel_tol"):
        Tolerance.from_dict({"rel_tol": -1})
    with pytest.raises(ValueError, match="rel_tol must be a number"):
        Tolerance.from_dict({"rel_tol": "lots"})


def test_report_is_json_and_strip_outputs_clears_results():
    import json

    report = compare_notebooks(BASE, BASE)
    assert json.loads(json.dumps(report)) == report
    stripped = strip_outputs(BASE)
    assert all(c.get("outputs", []) == [] for c in stripped["cells"])
    nbformat.validate(nbformat.from_dict(stripped))


def test_not_a_notebook_is_refused():
    with pytest.raises(ValueError, match="no 'cells' list"):
        compare_notebooks({"cells": "x"}, BASE)
