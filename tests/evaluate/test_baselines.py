import pytest

from tunesmith.chat.tools import Tool
from tunesmith.data.formats import Example, Message, split_prompt, with_system
from tunesmith.data.tokenize import encode_chat
from tunesmith.evaluate.baselines import FewShotSelector, demonstrations, few_shot_prompt


def _chat(question, answer):
    return (Message("user", question), Message("assistant", answer))


TRAIN = [
    _chat("What is the capital of France?", "LOC"),
    _chat("Who wrote Hamlet?", "HUM"),
    _chat("How many legs does a spider have?", "NUM"),
    _chat("What is the capital of Spain?", "LOC"),
    _chat("What does NASA stand for?", "ABBR"),
]
QUESTION = (Message("user", "What is the capital of Italy?"),)


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        (_chat("q", "a"), ((Message("user", "q"),), "a")),
        (
            (Message("system", "s"), *_chat("q", "a"), Message("user", "more")),
            ((Message("system", "s"), Message("user", "q")), "a"),
        ),
        ((Message("user", "q"),), None),
    ],
)
def test_split_prompt_at_the_last_answer(messages, expected):
    assert split_prompt(messages) == expected


@pytest.mark.parametrize(
    ("messages", "system", "roles"),
    [
        (QUESTION, "be brief", ["system", "user"]),
        (QUESTION, None, ["user"]),
        ((Message("system", "own"), *QUESTION), "be brief", ["system", "user"]),
    ],
)
def test_with_system_adds_one_only_when_missing(messages, system, roles):
    assert [m.role for m in with_system(messages, system)] == roles


def test_demonstrations_drop_system_turns_and_unanswered_chats():
    examples = [
        Example(1, (Message("system", "s"), *TRAIN[0])),
        Example(2, (Message("user", "no answer"),)),
        Example(3, text="raw text"),
    ]
    assert demonstrations(examples) == [TRAIN[0]]


def test_similar_selection_ranks_by_token_overlap_and_skips_the_question_itself(tiny):
    pool = [*TRAIN, (*QUESTION, Message("assistant", "LOC"))]
    ranked = FewShotSelector(pool, tiny.tokenizer, "similar", seed=0).ranked(QUESTION, 0, 2)
    assert [d[0].content for d in ranked] == [
        "What is the capital of France?",
        "What is the capital of Spain?",
    ]


def test_random_selection_is_seeded_per_item(tiny):
    selector = FewShotSelector(TRAIN, tiny.tokenizer, "random", seed=0)
    first = selector.ranked(QUESTION, 4, 3)
    assert len(first) == 3
    assert selector.ranked(QUESTION, 4, 3) == first
    assert FewShotSelector(TRAIN, tiny.tokenizer, "random", seed=0).ranked(QUESTION, 4, 3) == first
    draws = {tuple(d[0].content for d in selector.ranked(QUESTION, i, 3)) for i in range(10)}
    assert len(draws) > 1  # different items see different examples


@pytest.mark.parametrize("fitting", [0, 1, 2, 3])
def test_few_shot_keeps_the_most_examples_that_fit_the_budget(tiny, fitting):
    tok = tiny.tokenizer
    ranked = TRAIN[:3]
    # The exact length of the prompt with `fitting` examples is the budget.
    turns = [m for demo in reversed(ranked[:fitting]) for m in demo]
    budget = len(encode_chat(tok, (*turns, *QUESTION)))
    prompt = few_shot_prompt(tok, QUESTION, ranked, None, budget)
    assert prompt.shots == fitting
    assert len(prompt.ids) == budget


def test_few_shot_puts_examples_as_earlier_turns_best_last(tiny):
    tok = tiny.tokenizer
    prompt = few_shot_prompt(tok, QUESTION, TRAIN[:2], "sys", budget=10_000)
    text = tok.decode(prompt.ids)
    order = [text.index(s) for s in ("sys", "Who wrote Hamlet?", "HUM", "capital of France", "LOC", "Italy")]
    assert order == sorted(order)
    assert text.count("<|im_start|>assistant") == 3  # two answered demonstrations + the open turn


def test_zero_shot_prompt_fits_even_over_budget(tiny):
    prompt = few_shot_prompt(tiny.tokenizer, QUESTION, TRAIN, None, budget=1)
    assert prompt.shots == 0
    assert prompt.ids == encode_chat(tiny.tokenizer, QUESTION)


@pytest.mark.parametrize("tools", [(), (Tool("get_weather", "Weather in a city", {"type": "object"}),)])
def test_few_shot_prompt_offers_the_test_examples_tools(tiny, tools):
    text = tiny.tokenizer.decode(few_shot_prompt(tiny.tokenizer, QUESTION, TRAIN[:1], None, 10_000, tools).ids)
    assert ("get_weather" in text) is bool(tools)
    assert text.index("capital of Italy") < text.rindex("<|im_start|>assistant")
