"""E2E answer length: how far an answer runs past what people write for its meaning representation.

A `python` grader for reinforcement lines carrying ``item["mr"]``, meant as the price term of a multi
grader beside the slot-coverage grader (configs/e2e_grpo.yaml, where the price was chosen): slot
coverage alone is satisfied by ever longer answers that restate attributes, which GRPO found.

The allowance is the length of the E2E training references for that many attributes, 3.7 words
per attribute (their words over their attributes in data/e2e_nlg/train.jsonl: 3.73; means of 12.6
words for 3 attributes, 21.8 for 6, 30.3 for 8). The
grade is the excess as a share of the allowance: 0 at or under it, 0.5 for an answer half as long
again, 1 for twice as long. Runs in the sandbox: standard library only.
"""

WORDS_PER_ATTRIBUTE = 3.7


def excess(mr: str, text: str) -> float:
    """max(0, words / allowance - 1) for an answer ``text`` to the representation ``mr``."""
    allowance = WORDS_PER_ATTRIBUTE * max(mr.count("["), 1)
    return max(0.0, len(text.split()) / allowance - 1.0)


def grade(sample, item):
    return excess(item["mr"], sample["output_text"])
