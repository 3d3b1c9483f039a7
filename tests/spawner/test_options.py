"""Server-side validation of user_options (pure; the REST tests check the 400s end to end)."""

import pytest

from hybridhub.catalog import load_catalog
from hybridhub.spawner.options import LaunchRequest, OptionError, form_to_options, validate_options

CAT = load_catalog()
GOOD = {"class": "enterprise", "model": "h100", "count": 2, "hours": 3, "group": "lab-vision"}


def test_valid_options_give_a_launch_request():
    req, off = validate_options(GOOD, CAT, {"lab-vision"})
    assert req == LaunchRequest("enterprise", "h100", 2, 3.0, "lab-vision")
    assert off.model == "H100 80GB"
    assert req.as_user_options() == {**GOOD, "hours": 3.0}


def test_form_fields_map_to_canonical_options():
    form = {
        "offering": ["aws/inf2.xlarge"],
        "count:aws/inf2.xlarge": ["1"],
        "count:community/rtx4090": ["2"],
        "hours": ["1.5"],
        "group": ["course-ml101"],
    }
    assert form_to_options(form) == {
        "class": "aws",
        "model": "inf2.xlarge",
        "count": 1,
        "hours": 1.5,
        "group": "course-ml101",
    }
    assert form_to_options({"offering": ["aws/inf2.xlarge"], "count:aws/inf2.xlarge": ["lots"]})["count"] == "lots"
    req, _ = validate_options(form_to_options(form), CAT, {"course-ml101"})
    assert req.count == 1 and req.hours == 1.5


@pytest.mark.parametrize(
    "change, field, allowed",
    [
        ({"class": "quantum"}, "class", "['aws', 'community', 'enterprise']"),
        ({"model": "tpu"}, "model", "['a100', 'h100', 'h200']"),
        ({"count": 3}, "count", "[1, 2, 4, 8]"),
        ({"count": "two"}, "count", "integer"),
        ({"hours": 25}, "hours", "at most 24"),
        ({"hours": 0}, "hours", "at least 0.25"),
        ({"hours": float("nan")}, "hours", "finite"),
        ({"hours": "nan"}, "hours", "JSON number"),
        # strict types: strings, booleans, non-ASCII digits, spaces, tiny and off-step hours
        ({"count": "1"}, "count", "JSON integer"),
        ({"count": "\u0661"}, "count", "JSON integer"),  # ARABIC-INDIC DIGIT ONE
        ({"count": 1.0}, "count", "JSON integer"),
        ({"count": True}, "count", "JSON integer"),
        ({"hours": " 1 "}, "hours", "JSON number"),
        ({"hours": "1"}, "hours", "JSON number"),
        ({"hours": True}, "hours", "JSON number"),
        ({"hours": 1e-300}, "hours", "at least 0.25"),
        ({"hours": 1e-9}, "hours", "at least 0.25"),
        ({"hours": 10**400}, "hours", "finite"),
        ({"hours": 1.1}, "hours", "multiple of 0.25"),
        ({"class": ["community"]}, "class", "unknown class"),
        ({"group": {"x": 1}}, "group", "not a member"),
        ({"group": "lab-other"}, "group", "['lab-vision']"),
        ({"colour": "red"}, "colour", "allowed options"),
    ],
)
def test_each_bad_field_is_named_with_what_is_allowed(change, field, allowed):
    with pytest.raises(OptionError) as exc:
        validate_options({**GOOD, **change}, CAT, {"lab-vision"})
    assert exc.value.field == field
    assert allowed in str(exc.value)


@pytest.mark.parametrize("missing", ["class", "model", "count", "hours"])
def test_missing_fields_are_named(missing):
    opts = {k: v for k, v in GOOD.items() if k != missing}
    with pytest.raises(OptionError) as exc:
        validate_options(opts, CAT, {"lab-vision"})
    assert exc.value.field == missing and "required" in str(exc.value)


def test_group_defaults_only_for_a_single_group_user():
    opts = {k: v for k, v in GOOD.items() if k != "group"}
    req, _ = validate_options(opts, CAT, {"lab-vision"}, default_group="lab-vision")
    assert req.group == "lab-vision"
    with pytest.raises(OptionError, match="group: is required"):
        validate_options(opts, CAT, {"lab-vision", "project-llm"})


def test_offering_restricted_to_groups_is_hidden_from_others():
    cat = load_catalog(
        {
            "gpu": {
                "backend": "local",
                "offerings": {
                    "l4": {"model": "L4", "counts": [1], "price_per_hour": 1, "max_hours": 2, "groups": ["lab-x"]}
                },
            }
        }
    )
    with pytest.raises(OptionError) as exc:
        validate_options(
            {"class": "gpu", "model": "l4", "count": 1, "hours": 1, "group": "course-y"}, cat, {"course-y"}
        )
    assert exc.value.field == "class"


def test_form_numbers_are_plain_ascii_decimals_only():
    def parsed(count: str, hours: str) -> dict:
        return form_to_options({"offering": ["aws/inf2.xlarge"], "count:aws/inf2.xlarge": [count],
                                "hours": [hours]})

    assert parsed("1", "0.75") == {"class": "aws", "model": "inf2.xlarge", "count": 1, "hours": 0.75}
    for count, hours in (("\u0661", "1"), ("1", " 1 "), ("+1", "1e0"), ("1", "\u0661")):
        opts = parsed(count, hours)
        with pytest.raises(OptionError) as exc:
            validate_options({**opts, "group": "course-ml101"}, CAT, {"course-ml101"})
        assert exc.value.field in ("count", "hours")


def test_min_hours_and_step_come_from_the_offering_or_the_defaults():
    assert validate_options({**GOOD, "hours": 0.003}, CAT, {"lab-vision"}, min_hours=0.001,
                            hours_step=0.001)[0].hours == 0.003
    with pytest.raises(OptionError, match="at least 0.5"):
        validate_options({**GOOD, "hours": 0.25}, CAT, {"lab-vision"}, min_hours=0.5)
    cat = load_catalog(config={"c": {"offerings": {"g": {
        "model": "G", "counts": [1], "price_per_hour": 1, "max_hours": 4, "min_hours": 1,
        "hours_step": 0.5}}}})
    opts = {"class": "c", "model": "g", "count": 1, "group": "lab-vision"}
    assert validate_options({**opts, "hours": 1.5}, cat, {"lab-vision"})[0].hours == 1.5
    for hours, problem in ((0.5, "at least 1"), (1.25, "multiple of 0.5")):
        with pytest.raises(OptionError, match=problem):
            validate_options({**opts, "hours": hours}, cat, {"lab-vision"})


def test_a_megabyte_value_is_quoted_back_cut_short():
    huge = "x" * 1_000_000
    for opts in ({**GOOD, "model": huge}, {**GOOD, huge: 1}, {**GOOD, "count": huge},
                 {**GOOD, "group": huge}, {**GOOD, "hours": [huge]}):
        with pytest.raises(OptionError) as exc:
            validate_options(opts, CAT, {"lab-vision"})
        assert len(str(exc.value)) < 400, str(exc.value)[:500]
