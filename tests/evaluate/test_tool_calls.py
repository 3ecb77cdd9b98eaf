import math

import pytest

from tunesmith.evaluate.tool_calls import ParsedOutput, call_matches, judge, normalise, tool_call_stats

AREA = {
    "name": "area",
    "parameters": {
        "type": "dict",
        "properties": {
            "base": {"type": "integer"},
            "height": {"type": "float"},
            "unit": {"type": "string"},
            "sides": {"type": "array", "items": {"type": "string"}},
            "options": {"type": "dict"},
            "exact": {"type": "boolean"},
        },
        "required": ["base", "height"],
    },
}
# OpenAI's JSON Schema names for the same tool: number is BFCL's float, object its dict.
AREA_JSON_SCHEMA = {
    "name": "area",
    "parameters": {
        "type": "object",
        "properties": {"base": {"type": "integer"}, "height": {"type": "number"}, "unit": {"type": "string"}},
        "required": ["base", "height"],
    },
}
EXPECTED = {
    "area": {
        "base": [10],
        "height": [5.0],
        "unit": ["square meters", ""],
        "sides": [["North side", "south"], ""],
        "options": [{"round": [True], "digits": [2, ""]}, ""],
        "exact": [False, ""],
    }
}


@pytest.mark.parametrize(
    ("arguments", "ok", "why"),
    [
        ({"base": 10, "height": 5.0}, True, "optional arguments left out"),
        ({"base": 10, "height": 5}, True, "an int is acceptable for a float parameter"),
        ({"base": 10.0, "height": 5.0}, False, "a float is not an integer"),
        ({"base": "10", "height": 5.0}, False, "a string is not an integer"),
        ({"height": 5.0}, False, "a required argument is missing"),
        ({"base": 10, "height": 5.0, "unit": "Square-Meters"}, True, "strings: case, spaces, '-' ignored"),
        ({"base": 10, "height": 5.0, "unit": "square feet"}, False, "a string not among the acceptable ones"),
        ({"base": 10, "height": 5.0, "colour": "red"}, False, "an argument the tool does not declare"),
        ({"base": 10, "height": 5.0, "sides": ["north_side", "SOUTH"]}, True, "list elements normalised"),
        ({"base": 10, "height": 5.0, "sides": ["south", "north side"]}, False, "list order matters"),
        ({"base": 10, "height": 5.0, "sides": "north side"}, False, "a string is not an array"),
        ({"base": 10, "height": 5.0, "options": {"round": True}}, True, "a dict with its optional key left out"),
        ({"base": 10, "height": 5.0, "options": {"round": True, "digits": 3}}, False, "a dict value not acceptable"),
        ({"base": 10, "height": 5.0, "options": {"digits": 2}}, False, "a dict missing a required key"),
        ({"base": 10, "height": 5.0, "exact": 0}, False, "0 is not False: bool and int are kept apart"),
        ({"base": 10, "height": 5.0, "exact": False}, True, "a bool among the acceptable ones"),
    ],
)
def test_call_matches_bfcl_rules(arguments, ok, why):
    assert call_matches("area", arguments, EXPECTED, {"area": AREA}) is ok, why


def test_json_schema_type_names_score_as_bfcl_ones():
    expected = {"area": {"base": [10], "height": [5.0], "unit": ["m2", ""]}}
    tools = {"area": AREA_JSON_SCHEMA}
    assert call_matches("area", {"base": 10, "height": 5}, expected, tools)
    assert not call_matches("area", {"base": 10.5, "height": 5}, expected, tools)
    assert not call_matches("volume", {"base": 10, "height": 5}, {"volume": expected["area"]}, tools)


def test_an_expected_argument_without_optional_mark_must_be_given():
    expected = {"area": {"base": [10], "height": [5.0], "unit": ["m2"]}}
    assert not call_matches("area", {"base": 10, "height": 5.0}, expected, {"area": AREA})


def test_normalise_is_bfcls():
    assert normalise("April 1, 2024") == normalise("april 1 2024") == "april12024"
    assert normalise("it's") == 'it"s'


PLAY = {
    "name": "play",
    "parameters": {
        "type": "object",
        "properties": {"artist": {"type": "string"}, "minutes": {"type": "integer"}},
        "required": ["artist", "minutes"],
    },
}
TWO_PLAYS = [
    {"play": {"artist": ["Taylor Swift"], "minutes": [20]}},
    {"play": {"artist": ["Maroon 5"], "minutes": [15]}},
]


def _out(*calls, attempted=None, valid=True):
    return ParsedOutput(tuple(calls), bool(calls) if attempted is None else attempted, valid)


@pytest.mark.parametrize(
    ("output", "answer", "exact", "names"),
    [
        (
            _out(("play", {"artist": "Maroon 5", "minutes": 15}), ("play", {"artist": "taylor swift", "minutes": 20})),
            TWO_PLAYS,
            True,
            True,
        ),  # parallel calls in the other order still match
        (
            _out(("play", {"artist": "Maroon 5", "minutes": 15}), ("play", {"artist": "Maroon 5", "minutes": 15})),
            TWO_PLAYS,
            False,
            True,
        ),  # one expected call may not be matched twice
        (_out(("play", {"artist": "Maroon 5", "minutes": 15})), TWO_PLAYS, False, False),  # one call missing
        (_out(("play", {"artist": "Taylor Swift", "minutes": 20})), TWO_PLAYS[:1], True, True),
        (_out(("pause", {})), TWO_PLAYS[:1], False, False),
        (_out(), [], True, True),  # irrelevance: no call is the right answer
        (_out(("play", {"artist": "x", "minutes": 1})), [], False, False),  # irrelevance: any call is wrong
        (_out(attempted=True, valid=False), [], False, True),  # an unreadable attempt is a call attempt
        # A readable call next to an unreadable one: not an exact answer even if the readable one fits.
        (_out(("play", {"artist": "Taylor Swift", "minutes": 20}), valid=False), TWO_PLAYS[:1], False, True),
    ],
)
def test_judge_items(output, answer, exact, names):
    verdict = judge(output, answer, {"play": PLAY})
    assert (verdict.exact, verdict.names) == (exact, names)


def test_metrics_per_category_and_conditional_shares():
    tools = {"play": PLAY}
    one = TWO_PLAYS[:1]
    right = ("play", {"artist": "Taylor Swift", "minutes": 20})
    wrong_value = ("play", {"artist": "Taylor Swift", "minutes": 21})
    outputs = [
        _out(right),  # simple: exact
        _out(wrong_value),  # simple: right name, wrong argument
        _out(attempted=True, valid=False),  # simple: unreadable call
        _out(),  # irrelevance: correct
        _out(right),  # irrelevance: called anyway
    ]
    answers = [one, one, one, [], []]
    categories = ["simple", "simple", "simple", "irrelevance", "irrelevance"]
    table = tool_call_stats(outputs, answers, [tools] * 5, categories)
    scores = {name: stats.score() for name, stats in table.items()}
    assert scores == pytest.approx(
        {
            "exact_call": 100 * 2 / 5,
            "name": 100 * 3 / 5,  # items 1, 2 and 4
            "arguments": 100 * 1 / 2,  # of the two call items with the right name, one has right arguments
            "json_valid": 100 * 3 / 4,  # four attempted calls, one unreadable
            "no_call": 100 * 1 / 2,
            "exact_call[irrelevance]": 50.0,
            "exact_call[simple]": 100 * 1 / 3,
        }
    )


def test_a_share_with_nothing_counted_is_nan():
    table = tool_call_stats([_out()], [[]], [{}], ["irrelevance"])
    assert math.isnan(table["arguments"].score()) and math.isnan(table["json_valid"].score())
