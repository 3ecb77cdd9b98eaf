"""E2E slot coverage: the share of a meaning representation's attributes realised in the sentence.

A `python` grader (rl.grader: examples/e2e_slot_coverage.py) for reinforcement lines carrying the
meaning representation as ``item["mr"]``, e.g. "name[The Eagle], eatType[pub], priceRange[cheap],
familyFriendly[no]". It is the complement of the E2E challenge's slot error rate, counting
omissions only: an attribute counts as realised when the sentence says it in one of the ways the
E2E references do (case-insensitive), so "£20-25" is also "20 to 25" or "moderately priced",
"cheap" also "inexpensive" or "low price", and familyFriendly[no] needs a negated mention
("not family-friendly", "no kids", "adults only") while familyFriendly[yes] needs one that is
not negated. Names (name, near) must appear as written. Runs in the sandbox: standard library only.
"""

import re

MODERATE = (
    "moderate",
    "average price",
    "averagely priced",
    "mid price",
    "mid-price",
    "mid range",
    "mid-range",
    "reasonabl",
)
PRICE = {
    "cheap": ("cheap", "inexpensive", "low price", "low cost", "low-cost", "affordable", "budget", "less than £20"),
    "less than £20": (
        "less than £20",
        "under £20",
        "below £20",
        "less than 20",
        "lower than £20",
        "under 20",
        "cheap",
        "inexpensive",
        "low price",
        "low cost",
        "low-cost",
        "affordable",
    ),
    "moderate": (*MODERATE, "£20-25", "20-25"),
    "£20-25": ("£20-25", "£20-£25", "20-25", "20 - 25", "20 to 25", "twenty to twenty-five", *MODERATE),
    "high": ("high", "expensive", "pricey", "costly", "premium", "more than £30", "over £30"),
    "more than £30": (
        "more than £30",
        "over £30",
        "above £30",
        "more than 30",
        "over 30",
        "£30+",
        "30 plus",
        "expensive",
        "high price",
        "high-price",
        "high-priced",
        "pricey",
        "costly",
    ),
}
NUMBERS = {"1": "one", "3": "three", "5": "five"}
RATING_WORDS = {
    "low": ("low", "poor", "bad", "1 star", "one star", "1 out of 5"),
    "average": ("average", "mediocre", "middling", "3 out of 5", "three star"),
    "high": ("high", "excellent", "great", "top", "5 out of 5", "five star"),  # "high" also says "highly rated"
}
EAT_TYPE = {
    "coffee shop": ("coffee shop", "café", "cafe", "coffee house"),
    "pub": ("pub",),
    "restaurant": ("restaurant", "eatery", "diner"),
}
FOOD = {"english": ("english", "british"), "fast food": ("fast food", "fast-food", "burger")}
AREA = {
    "city centre": (
        "city centre",
        "city center",
        "centre of the city",
        "center of the city",
        "centre of town",
        "town centre",
        "downtown",
    ),
    "riverside": ("riverside", "river"),
}
FAMILY = r"famil|kid|child|adult"
NEGATION = r"\b(not|n't|non|no|never|isn't|aren't|without)\b"


def slots(mr: str) -> list[tuple[str, str]]:
    """[(attribute, value)] of "name[The Eagle], eatType[pub], ..."."""
    return [(k.strip(), v.strip()) for k, v in re.findall(r"([^,\[\]]+)\[([^\]]*)\]", mr)]


def _says(text: str, phrases) -> bool:
    return any(phrase.lower() in text for phrase in phrases)


def _rating(value: str) -> tuple[str, ...]:
    words = RATING_WORDS.get(value)
    if words is not None:
        return words
    number = value.split(" ", 1)[0]  # "3 out of 5"
    spelled = NUMBERS.get(number, number)
    return (
        value,
        f"{spelled} out of five",
        f"{number} star",
        f"{spelled} star",
        f"{number}-star",
        f"{spelled}-star",
        f"{number}/5",
        f"{number} of 5",
        f"{number} out 5",
        f"rating of {number}",
        f"rated {number}",
    )


def _family(text: str, friendly: bool) -> bool:
    """familyFriendly: a mention of families, kids, children (or adults: "adults only" is a no),
    negated within the few words before it for a no, not negated for a yes."""
    for mention in re.finditer(FAMILY, text):
        before = text[max(0, mention.start() - 20) : mention.start()]
        negated = bool(re.search(NEGATION, before)) or text.startswith("adult", mention.start())
        if negated != friendly:
            return True
    return False


def realised(attribute: str, value: str, text: str) -> bool:
    """Whether the lower-cased, dash-normalised ``text`` realises ``attribute[value]``."""
    v = value.lower()
    if attribute in ("name", "near"):
        return v in text
    if attribute == "eatType":
        return _says(text, EAT_TYPE.get(v, (v,)))
    if attribute == "food":
        return _says(text, FOOD.get(v, (v,)))
    if attribute == "priceRange":
        return _says(text, PRICE.get(v, (v,)))
    if attribute == "customer rating":
        return _says(text, _rating(v))
    if attribute == "area":
        return _says(text, AREA.get(v, (v,)))
    if attribute == "familyFriendly":
        return _family(text, v == "yes")
    return v in text  # an attribute E2E does not have: its value as written


def coverage(mr: str, text: str) -> float:
    """The share of ``mr``'s attributes that ``text`` realises (1.0 for an empty representation)."""
    wanted = slots(mr)
    if not wanted:
        return 1.0
    normal = re.sub(r"\s+", " ", re.sub("[\u2010-\u2015]", "-", text.lower()))
    return sum(realised(a, v, normal) for a, v in wanted) / len(wanted)


def grade(sample, item):
    return coverage(item["mr"], sample["output_text"])
