"""The shipped E2E slot-coverage grader (examples/e2e_slot_coverage.py) on hand-counted sentences."""

import importlib.util
from pathlib import Path

import pytest

from tunesmith.graders import Context, grade, make_sample
from tunesmith.graders.load import load_grader
from tunesmith.graders.sandbox import Limits

FILE = Path(__file__).resolve().parents[2] / "examples/e2e_slot_coverage.py"
spec = importlib.util.spec_from_file_location("e2e_slot_coverage", FILE)
slot_coverage = importlib.util.module_from_spec(spec)
spec.loader.exec_module(slot_coverage)

EAGLE = (
    "name[The Eagle], eatType[pub], priceRange[£20-25], customer rating[3 out of 5], familyFriendly[no], "
    "near[Burger King]"
)


@pytest.mark.parametrize(
    "mr, text, realised",
    [
        # all six: the price as "20 to 25", the rating in words, familyFriendly[no] as a negated mention
        (
            EAGLE,
            "The Eagle is a pub near Burger King, 20 to 25 pounds, rated three out of five, not family-friendly.",
            6,
        ),
        # the price and the family slot missing, the rating as "3 star"
        (EAGLE, "The Eagle pub near Burger King has a 3 star rating.", 4),
        # a family-friendly mention that is NOT negated does not realise familyFriendly[no]
        (EAGLE, "The Eagle is a family friendly pub.", 2),
        ("name[Zizzi], familyFriendly[yes]", "Zizzi welcomes kids.", 2),
        ("name[Zizzi], familyFriendly[yes]", "Zizzi is not kid friendly.", 1),
        ("name[Zizzi], familyFriendly[no]", "Zizzi is for adults only.", 2),
        ("name[Zizzi], familyFriendly[no]", "Zizzi is a non-family-friendly place.", 2),
        ("name[Zizzi], priceRange[cheap]", "Zizzi is inexpensive.", 2),
        ("name[Zizzi], priceRange[less than £20]", "Zizzi costs under £20.", 2),
        ("name[Zizzi], priceRange[more than £30]", "Zizzi is an expensive place.", 2),
        ("name[Zizzi], priceRange[more than £30]", "Zizzi is a cheap place.", 1),
        ("name[Zizzi], food[Fast food], area[city centre]", "ZIZZI serves fast-food in the city center.", 3),
        ("name[Zizzi], food[English], area[riverside]", "Zizzi serves British food.", 2),
        ("name[Zizzi], eatType[coffee shop], customer rating[low]", "Zizzi is a poorly rated café.", 3),
        ("name[Zizzi], near[The Sorrento]", "Zizzi is near Sorrento.", 1),  # names as written
    ],
)
def test_share_of_attributes_realised(mr, text, realised):
    n = len(slot_coverage.slots(mr))
    assert slot_coverage.coverage(mr, text) == pytest.approx(realised / n)


def test_an_empty_representation_is_fully_covered():
    assert slot_coverage.coverage("", "anything") == 1.0


def test_the_file_is_a_python_grader_run_in_the_sandbox():
    """rl.grader: examples/e2e_slot_coverage.py loads as a python grader named for the file."""
    grader = load_grader(str(FILE))
    assert grader.type == "python" and grader.name == "e2e_slot_coverage"
    context = Context(limits=Limits(cpu_seconds=5, memory_bytes=512 << 20, wall_seconds=60), workers=1)
    text = "The Eagle pub near Burger King has a 3 star rating."
    assert grade(grader, make_sample(text), {"mr": EAGLE}, context).reward == pytest.approx(4 / 6)


def test_the_shipped_config_and_its_prompts_check(monkeypatch):
    """configs/e2e_grpo.yaml loads, its grader joins this file's, and every rl_*.jsonl line carries the mr it reads."""
    from tunesmith.config import load_config
    from tunesmith.graders.data import read_graded

    repo = FILE.parents[1]
    monkeypatch.chdir(repo)  # the config's paths are relative to the repository root
    cfg = load_config(repo / "configs/e2e_grpo.yaml")
    grader = load_grader(cfg.rl.grader)
    assert cfg.method.name == "grpo" and cfg.eval.task == "graded"
    assert grader.graders["slots"].name == "e2e_slot_coverage"
    for name, lines in (("train", 522), ("validation", 25), ("test", 630)):
        data = read_graded(repo / f"data/e2e_nlg/rl_{name}.jsonl", grader)
        assert data.errors == [] and len(data.examples) == lines
        first = data.examples[0]
        assert first.messages[0].content.endswith(first.item["mr"])
