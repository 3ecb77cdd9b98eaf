"""The shipped E2E length grader (examples/e2e_length.py) and the multi grader configs/e2e_grpo.yaml
builds from it and the slot-coverage grader, loaded from their files."""

from pathlib import Path

import pytest

from tunesmith.config import load_config
from tunesmith.errors import TunesmithError
from tunesmith.graders import Context, grade, make_sample
from tunesmith.graders.load import load_grader
from tunesmith.graders.sandbox import Limits

ROOT = Path(__file__).resolve().parents[2]
MR = "name[Zizzi], eatType[pub], area[riverside]"  # 3 attributes: an allowance of 11.1 words
EXACT = "Zizzi is a pub by the riverside."  # 7 words
PADDED = "Zizzi is a pub by the riverside. It is a pub. It is located in the riverside area, by the river."  # 21 words


def _grade(grader, text: str, mr: str = MR):
    return grade(grader, make_sample(text), {"mr": mr}, Context(limits=Limits(wall_seconds=60), workers=1))


@pytest.mark.parametrize(
    "text, excess",
    [
        (EXACT, 0.0),
        ("word " * 11, 0.0),
        ("word " * 15, 15 / 11.1 - 1),
        (PADDED, len(PADDED.split()) / 11.1 - 1),
        ("word " * 222, 19.0),
    ],
)
def test_length_is_the_excess_over_the_human_allowance(text, excess):
    assert _grade(load_grader(str(ROOT / "examples/e2e_length.py")), text).reward == pytest.approx(excess)


def test_the_config_grader_prices_padding_that_coverage_alone_rewards(monkeypatch):
    monkeypatch.chdir(ROOT)  # the config names its grader files from the repository root
    loaded = load_grader(load_config("configs/e2e_grpo.yaml").rl.grader)
    assert loaded.type == "multi" and set(loaded.graders) == {"slots", "length"}
    # Coverage alone cannot tell the padded answer from the exact one; the whole grader can.
    assert _grade(loaded.graders["slots"], PADDED).reward == _grade(loaded.graders["slots"], EXACT).reward == 1.0
    exact, padded = _grade(loaded, EXACT), _grade(loaded, PADDED)
    assert exact.reward == 1.0 and exact.sub_rewards == {"slots": 1.0, "length": 0.0}
    assert padded.sub_rewards["length"] == pytest.approx(len(PADDED.split()) / 11.1 - 1)
    assert padded.reward < exact.reward


def test_a_missing_part_file_is_named_by_its_key(tmp_path):
    spec = {
        "type": "multi",
        "name": "m",
        "graders": {"slots": str(ROOT / "examples/e2e_slot_coverage.py"), "length": str(tmp_path / "gone.py")},
        "calculate_output": "slots - length",
    }
    with pytest.raises(TunesmithError, match=r"rl.grader.graders.length: .*gone.py is not a file"):
        load_grader(spec)
