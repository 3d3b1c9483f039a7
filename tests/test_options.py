"""Server-side validation of user_options (pure; the REST tests check the 400s end to end)."""

import pytest

from spawner.catalog import load_catalog
from spawner.options import LaunchRequest, OptionError, form_to_options, validate_options

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
        ({"hours": 0}, "hours", "more than 0"),
        ({"hours": "nan"}, "hours", "finite"),
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
