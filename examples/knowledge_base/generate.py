"""A knowledge base of invented towns, companies and people, for comparing fine-tuning with retrieval.

    python examples/knowledge_base/generate.py [--seed 0] [--out examples/knowledge_base]

Every name is made up from syllables, so no pretrained model knows a single fact here: whatever a
model answers right, it got from the documents (retrieval) or from the training questions
(fine-tuning). The same seed writes the same bytes.

Files (README.md beside this script says why they are split this way):

* documents.jsonl: one prose document per entity, `{"id", "text"}`: the eval.rag corpus. Each fact
  is written in one of several phrasings, sentences in a random order, with filler sentences;
* train.jsonl: the fine-tuning data, questions with short answers (`{"prompt", "completion"}`): every
  fact asked in three training phrasings;
* validation.jsonl: a quarter of the facts asked in a fourth phrasing (validation loss while training);
* test.jsonl: every fact asked once, in phrasings used nowhere else and worded away from the
  documents (no four consecutive words of a test question appear in a document).
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path

from tunesmith.paths import write_text_atomic

TOWNS, COMPANIES, PEOPLE = 12, 12, 16
VALIDATION_SHARE = 0.25

TOWN_HEADS = [
    "Vask",
    "Quel",
    "Brenn",
    "Ysk",
    "Morv",
    "Tral",
    "Oss",
    "Feyn",
    "Drum",
    "Kesh",
    "Palt",
    "Zor",
    "Hult",
    "Nim",
]
TOWN_MIDS = ["ar", "eth", "ov", "un", "ay", "ell", "im", "orr"]
TOWN_TAILS = ["holt", "mere", "wick", "stead", "ford", "gate", "by", "combe"]
PROVINCES = ["Ostravel", "Quenmark", "Hadrovia", "Selmiry"]
RIVERS = ["Vell", "Anskar", "Tirrow", "Esmeth", "Brue", "Calder Ym", "Orrin", "Sulve"]
FIRST_HEADS = ["Tes", "Mir", "Quil", "Ans", "Dor", "Lys", "Ber", "Ken", "Sav", "Iv", "Ran", "El", "Pim", "Yor"]
FIRST_TAILS = ["mira", "lan", "ora", "ric", "eth", "anne", "ion", "ella", "odd", "une"]
LAST_HEADS = ["Ven", "Quar", "Hol", "Tis", "Mar", "Ser", "Fal", "Dre", "Cor", "Brae", "Ulm", "Gath"]
LAST_TAILS = ["nick", "lowe", "loran", "combe", "rowe", "dane", "vette", "nholm", "strand", "berry"]
COMPANY_HEADS = ["Drov", "Pell", "Quor", "Ast", "Velm", "Torr", "Skell", "Hav", "Ibb", "Krau", "Lom", "Narr"]
COMPANY_TAILS = ["ak", "ine", "ory", "ent", "ask", "eld"]
COMPANY_KINDS = ["Works", "Company", "Brothers", "Manufacturing", "Trading", "Industries"]
PRODUCTS = [
    "ceramic tiles",
    "weather balloons",
    "bicycle bells",
    "copper kettles",
    "sailcloth",
    "telescope lenses",
    "pocket watches",
    "rope ladders",
    "glass buoys",
    "tin whistles",
    "wool blankets",
    "garden shears",
    "paper lanterns",
    "brass hinges",
    "oak barrels",
    "canvas tents",
]
OCCUPATIONS = [
    "cartographer",
    "violin maker",
    "beekeeper",
    "glassblower",
    "ferry pilot",
    "archivist",
    "bookbinder",
    "stonemason",
    "botanist",
    "clockmaker",
    "lighthouse keeper",
    "weaver",
    "surveyor",
    "cheesemaker",
    "printer",
    "harbour master",
]

# Facts as sentences: several phrasings each; a document uses one per fact.
DOCUMENT_PHRASINGS = {
    "town.province": [
        "{name} is a town in the province of {value}.",
        "The province of {value} counts {name} among its towns.",
        "{name} sits in {value}, one of the old provinces.",
    ],
    "town.founded": [
        "{name} was founded in {value}.",
        "Settlers established {name} in {value}.",
        "The first houses of {name} were built in {value}.",
    ],
    "town.river": [
        "{name} lies on the banks of the {value}.",
        "The {value} flows through the middle of {name}.",
        "{name} grew up beside the river {value}.",
    ],
    "town.population": [
        "{name} has a population of {value}.",
        "About {value} people live in {name} today.",
        "The last census recorded {value} inhabitants in {name}.",
    ],
    "company.founded": [
        "{name} was founded in {value}.",
        "{name} opened its doors in {value}.",
        "The firm {name} began in {value}.",
    ],
    "company.founder": [
        "Its founder is {value}.",
        "{value} set up {name} with borrowed money.",
        "{name} was started by {value}.",
    ],
    "company.headquarters": [
        "{name} is headquartered in {value}.",
        "The head office of {name} is in {value}.",
        "{name} runs its business from {value}.",
    ],
    "company.product": [
        "{name} makes {value}.",
        "The company is best known for its {value}.",
        "Most of what {name} sells is {value}.",
    ],
    "person.born": [
        "{name} was born in {value}.",
        "{name}, born in {value}, grew up in a large family.",
        "The year {value} saw the birth of {name}.",
    ],
    "person.birthplace": [
        "{name} grew up in {value}.",
        "{name} is a native of {value}.",
        "{name} spent a childhood in {value}.",
    ],
    "person.occupation": [
        "{name} works as a {value}.",
        "By trade, {name} is a {value}.",
        "{name} earns a living as a {value}.",
    ],
}
FILLER = {
    "town": [
        "Its market square is paved with grey stone.",
        "Visitors often mention the narrow streets and the bell tower.",
        "A weekly market draws farmers from the surrounding hills.",
        "The old mill has been turned into a library.",
    ],
    "company": [
        "It employs workers from several nearby villages.",
        "Its catalogue has barely changed in decades.",
        "The firm has remained in the hands of one family.",
        "Its workshops are open to visitors once a year.",
    ],
    "person": [
        "Friends describe a patient and careful worker.",
        "In spare hours there is always a book close at hand.",
        "Long walks along the coast are a favourite pastime.",
        "Letters from colleagues fill several drawers at home.",
    ],
}
INTRO = {
    "town": "{name} is a small town.",
    "company": "{name} is a family-run business.",
    "person": "This is a short profile of {name}.",
}
# Questions: three training phrasings, one for validation, and test phrasings used nowhere else.
QUESTIONS = {
    "town.province": {
        "train": ["In which province is {name}?", "Which province is {name} part of?", "{name} is in which province?"],
        "validation": ["Name the province that contains {name}."],
        "test": ["What province would you travel to in order to visit {name}?", "{name} belongs to what region?"],
    },
    "town.founded": {
        "train": ["When was {name} founded?", "In what year was {name} established?", "What year was {name} founded?"],
        "validation": ["What is the founding year of {name}?"],
        "test": [
            "Since which year has there been a settlement called {name}?",
            "In what year did the history of {name} as a town begin?",
        ],
    },
    "town.river": {
        "train": ["Which river flows through {name}?", "On which river does {name} lie?", "What river is {name} on?"],
        "validation": ["What river runs past {name}?"],
        "test": ["Name the waterway that passes the town of {name}.", "Which stream crosses {name}?"],
    },
    "town.population": {
        "train": [
            "What is the population of {name}?",
            "How many people live in {name}?",
            "How big is {name}'s population?",
        ],
        "validation": ["How many inhabitants does {name} have?"],
        "test": ["What is the head count of residents in {name}?", "How many souls call {name} home?"],
    },
    "company.founded": {
        "train": ["When was {name} founded?", "In what year was {name} established?", "What year did {name} start?"],
        "validation": ["What is the founding year of {name}?"],
        "test": ["Since which year has the business {name} existed?", "In what year did {name} first trade?"],
    },
    "company.founder": {
        "train": ["Who founded {name}?", "Who is the founder of {name}?", "Which person founded {name}?"],
        "validation": ["Who established {name}?"],
        "test": ["Whose idea was the business {name}?", "Name the person behind the creation of {name}."],
    },
    "company.headquarters": {
        "train": [
            "Where is {name} headquartered?",
            "In which town is {name} based?",
            "Where is the head office of {name}?",
        ],
        "validation": ["Which town is home to {name}?"],
        "test": ["From what town does {name} direct its operations?", "Where are the main offices of {name}?"],
    },
    "company.product": {
        "train": ["What does {name} make?", "What product is {name} known for?", "What does {name} manufacture?"],
        "validation": ["What does {name} sell?"],
        "test": ["What goods come out of the workshops of {name}?", "If you bought from {name}, what would you get?"],
    },
    "person.born": {
        "train": ["When was {name} born?", "In what year was {name} born?", "What is the birth year of {name}?"],
        "validation": ["What year was {name} born?"],
        "test": ["In which year did {name} come into the world?", "What year is on the birth certificate of {name}?"],
    },
    "person.birthplace": {
        "train": ["Where did {name} grow up?", "Which town is {name} from?", "What is the hometown of {name}?"],
        "validation": ["In which town was {name} raised?"],
        "test": ["Where does {name} come from originally?", "Which place did {name} call home as a child?"],
    },
    "person.occupation": {
        "train": ["What is {name}'s job?", "What does {name} work as?", "What is the occupation of {name}?"],
        "validation": ["What is {name}'s profession?"],
        "test": ["What does {name} do for a living?", "What line of work is {name} in?"],
    },
}


@dataclass
class Entity:
    id: str
    kind: str
    name: str
    facts: dict[str, str]  # "town.founded" -> "1632"


def _unique_names(rng: random.Random, count: int, make) -> list[str]:
    names: list[str] = []
    while len(names) < count:
        name = make()
        if name not in names:
            names.append(name)
    return names


def _entities(rng: random.Random) -> list[Entity]:
    town_names = _unique_names(
        rng, TOWNS, lambda: rng.choice(TOWN_HEADS) + rng.choice(["", *TOWN_MIDS]) + rng.choice(TOWN_TAILS)
    )
    person_names = _unique_names(
        rng,
        PEOPLE,
        lambda: f"{rng.choice(FIRST_HEADS)}{rng.choice(FIRST_TAILS)} {rng.choice(LAST_HEADS)}{rng.choice(LAST_TAILS)}",
    )
    company_names = _unique_names(
        rng,
        COMPANIES,
        lambda: f"{rng.choice(COMPANY_HEADS)}{rng.choice(COMPANY_TAILS)} {rng.choice(COMPANY_KINDS)}",
    )
    towns = [
        Entity(
            f"town-{i + 1:02d}",
            "town",
            name,
            {
                "town.province": rng.choice(PROVINCES),
                "town.founded": str(rng.randint(1150, 1890)),
                "town.river": rng.choice(RIVERS),
                "town.population": f"{rng.randint(150, 9000) * 10:,}",
            },
        )
        for i, name in enumerate(town_names)
    ]
    people = []
    for i, name in enumerate(person_names):
        facts = {
            "person.born": str(rng.randint(1921, 1975)),  # founders are 22-45 when they found
            "person.birthplace": rng.choice(towns).name,
            "person.occupation": OCCUPATIONS[i % len(OCCUPATIONS)],
        }
        people.append(Entity(f"person-{i + 1:02d}", "person", name, facts))
    founders = rng.sample(people, COMPANIES)
    products = rng.sample(PRODUCTS, COMPANIES)
    companies = [
        Entity(
            f"company-{i + 1:02d}",
            "company",
            name,
            {
                "company.founded": str(int(founder.facts["person.born"]) + rng.randint(22, 45)),
                "company.founder": founder.name,
                "company.headquarters": rng.choice(towns).name,
                "company.product": product,
            },
        )
        for i, (name, founder, product) in enumerate(zip(company_names, founders, products, strict=True))
    ]
    return towns + companies + people


def _document(rng: random.Random, entity: Entity) -> str:
    sentences = [
        DOCUMENT_PHRASINGS[fact][rng.randrange(3)].format(name=entity.name, value=value)
        for fact, value in entity.facts.items()
    ]
    sentences += rng.sample(FILLER[entity.kind], 2)
    rng.shuffle(sentences)
    return " ".join([INTRO[entity.kind].format(name=entity.name), *sentences])


def _pairs(questions: list[tuple[str, str]]) -> str:
    return "".join(json.dumps({"prompt": q, "completion": a}) + "\n" for q, a in questions)


def generate(seed: int) -> dict[str, str]:
    """File name -> content."""
    rng = random.Random(seed)
    entities = _entities(rng)
    documents = "".join(json.dumps({"id": e.id, "text": _document(rng, e)}) + "\n" for e in entities)
    facts = [(e, fact, value) for e in entities for fact, value in e.facts.items()]
    train = [(template.format(name=e.name), value) for e, fact, value in facts for template in QUESTIONS[fact]["train"]]
    rng.shuffle(train)
    checked = rng.sample(facts, round(len(facts) * VALIDATION_SHARE))
    validation = [(QUESTIONS[fact]["validation"][0].format(name=e.name), value) for e, fact, value in checked]
    test = [(rng.choice(QUESTIONS[fact]["test"]).format(name=e.name), value) for e, fact, value in facts]
    rng.shuffle(test)
    return {
        "documents.jsonl": documents,
        "train.jsonl": _pairs(train),
        "validation.jsonl": _pairs(validation),
        "test.jsonl": _pairs(test),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent), help="folder to write the files to")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, content in generate(args.seed).items():
        write_text_atomic(out / name, content)
        print(f"{out / name}: {content.count(chr(10))} lines")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
