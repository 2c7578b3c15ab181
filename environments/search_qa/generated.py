"""A seeded synthetic encyclopedia with single-hop and two-hop questions over it.

No QA dataset or Wikipedia dump can be downloaded here, and questions about real entities would
let a pretrained model answer from memory without searching. This corpus invents people, cities,
countries, companies, universities and rivers with made-up names, renders their facts as
encyclopedia-style passages (with filler text and cross-mentions as distractors), and asks
questions whose answer is only in the corpus:

* single-hop ("Where was Ela Vortan born?"): one search finds the passage stating the fact;
* two-hop ("In which country is the city where Ela Vortan was born?"): the first search finds a
  bridge entity (the city), a second search about the bridge finds the answer.

Every fact sentence follows a known template, so :func:`extract_fact` can read a fact back from
retrieved text: the oracle policy uses it to play episodes end to end through the retriever.
Everything is derived from one ``random.Random(seed)`` (no set iteration, no hashing), so a seed
always gives the same corpus and questions.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from .passages import Passage

# ---------------------------------------------------------------------------------------------
# Relations: fact templates (the object is always last, right before the full stop, so that it
# can be read back with a regular expression), question templates and the oracle's query word.
# ---------------------------------------------------------------------------------------------

#: Regular expression of an object value, by kind (capitalised names, years, lower-case words).
_OBJECT_PATTERNS = {
    "entity": r"[A-Z][^.]*?",
    "year": r"\d{4}",
    "word": r"[a-z][a-z -]*?",
}


@dataclass(frozen=True)
class Relation:
    """A fact type: ``subject --key--> object``."""

    key: str
    subject_kind: str
    object_pattern: str  # key of _OBJECT_PATTERNS
    templates: tuple[str, ...]  # fact sentences with {s}, {o} and optionally {a} (a/an before {o})
    question: str  # single-hop question about {s}
    hint: str  # word the oracle adds to the subject to make its search query


RELATIONS: dict[str, Relation] = {
    r.key: r
    for r in (
        Relation("born_in", "person", "entity",
                 ("{s} was born in {o}.", "{s} was born in the city of {o}."),
                 "Where was {s} born?", "born"),
        Relation("birth_year", "person", "year",
                 ("{s} was born in {o}.", "The birth year of {s} is {o}."),
                 "In what year was {s} born?", "born"),
        Relation("alma_mater", "person", "entity",
                 ("{s} studied at {o}.", "{s} graduated from {o}."),
                 "Which university did {s} attend?", "studied"),
        Relation("profession", "person", "word",
                 ("{s} works as {a} {o}.", "By profession, {s} is {a} {o}."),
                 "What is the profession of {s}?", "profession"),
        Relation("employer", "person", "entity",
                 ("{s} is employed by {o}.", "{s} works for the company {o}."),
                 "Which company employs {s}?", "employed company"),
        Relation("country", "city", "entity",
                 ("{s} is a city in {o}.", "{s} is located in the country of {o}."),
                 "In which country is the city of {s} located?", "city country"),
        Relation("river", "city", "entity",
                 ("{s} lies on the banks of the {o}.", "The river that flows through {s} is the {o}."),
                 "Which river flows through {s}?", "river"),
        Relation("capital", "country", "entity",
                 ("The capital of {s} is {o}.", "The capital city of {s} is {o}."),
                 "What is the capital of {s}?", "capital"),
        Relation("headquarters", "company", "entity",
                 ("{s} is headquartered in {o}.", "The headquarters of {s} are in {o}."),
                 "Where is {s} headquartered?", "headquarters"),
        Relation("founder", "company", "entity",
                 ("{s} was founded by {o}.", "The founder of {s} is {o}."),
                 "Who founded {s}?", "founded"),
        Relation("founded_year", "company", "year",
                 ("{s} was established in {o}.", "{s} has existed since {o}."),
                 "In what year was {s} established?", "established"),
        Relation("university_city", "university", "entity",
                 ("{s} is located in the city of {o}.", "The campus of {s} is in {o}."),
                 "In which city is {s} located?", "located city"),
    )
}

#: Two-hop chains: (first relation, second relation, question about the first subject).
TWO_HOP: tuple[tuple[str, str, str], ...] = (
    ("born_in", "country", "In which country is the city where {s} was born?"),
    ("born_in", "river", "Which river flows through the city where {s} was born?"),
    ("employer", "headquarters", "In which city is the company that employs {s} headquartered?"),
    ("employer", "founder", "Who founded the company that employs {s}?"),
    ("alma_mater", "university_city", "In which city is the university that {s} attended?"),
    ("founder", "born_in", "Where was the founder of {s} born?"),
    ("headquarters", "country", "In which country is the city where {s} is headquartered?"),
    ("country", "capital", "What is the capital of the country where {s} is located?"),
)

PROFESSIONS = ("chemist", "architect", "engineer", "painter", "historian", "novelist", "surgeon", "economist",
               "astronomer", "composer", "lawyer", "botanist", "journalist", "sculptor", "geologist",
               "pianist", "mathematician", "diplomat", "photographer", "linguist")
INDUSTRIES = ("shipbuilding", "textiles", "software", "pharmaceuticals", "mining", "publishing", "aviation",
              "agriculture", "telecommunications", "glassmaking", "banking", "robotics")
COMPANY_SUFFIXES = ("Industries", "Systems", "Group", "Works", "Holdings", "Labs", "Trading", "Motors")

_ONSETS = ("b", "br", "c", "d", "dr", "f", "g", "gr", "h", "k", "kr", "l", "m", "n", "p", "pr", "r", "s", "st",
           "t", "tr", "v", "z", "th", "sh", "j", "", "")
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "ai", "ei")
_CODAS = ("", "n", "r", "l", "s", "th", "m", "nd", "rk", "x", "v", "sk", "t", "d")

_FILLER = {
    "person_early": (
        "As a child {s} spent long summers with relatives in the countryside.",
        "{s} showed an early interest in music and languages.",
        "The family moved several times during those school years.",
        "Teachers remembered {s} as curious and stubborn.",
        "{s} was the second of {n} children.",
    ),
    "person_career": (
        "Colleagues describe {s} as meticulous and generous with time.",
        "{s} has received several regional awards for this work.",
        "In later years {s} mentored many younger colleagues.",
        "{s} often collaborated with {other}.",
        "{s} has published {n} essays on the history of the profession.",
    ),
    "city_geo": (
        "The climate of {s} is mild, with wet winters and dry summers.",
        "{s} is surrounded by farmland and low wooded hills.",
        "The old town of {s} is known for its narrow streets and stone bridges.",
        "{s} has a population of about {pop} people.",
    ),
    "city_history": (
        "{s} was first mentioned in records from the {century}th century.",
        "Notable people from {s} include {other} and {other2}.",
        "The city hosts a well-known autumn market every year.",
        "Many buildings in {s} were rebuilt after a great fire.",
        "{s} is served by a regional railway line.",
    ),
    "country": (
        "{s} has a coastline of about {n}00 kilometres.",
        "The national flag of {s} is green and white.",
        "Its economy is based on {industry} and {industry2}.",
        "{s} is divided into {n} provinces.",
    ),
    "company": (
        "{s} is active in {industry}.",
        "The company employs about {n}00 people.",
        "Its products are sold in {other} and abroad.",
        "{s} grew quickly during the following decades.",
        "The company was restructured after a difficult period.",
    ),
    "university": (
        "{s} has about {n} thousand students.",
        "The library of {s} holds a large collection of old maps.",
        "{s} is known for its programmes in {industry}.",
        "The main building has a distinctive clock tower.",
    ),
}


@dataclass
class Entity:
    """A named thing of a given kind and its facts (relation key -> object name or value)."""

    name: str
    kind: str
    facts: dict[str, str] = field(default_factory=dict)


@dataclass
class GeneratedCorpus:
    """The passages, the question rows and the facts behind them."""

    seed: int
    passages: list[Passage]
    questions: list[dict[str, Any]]
    entities: dict[str, Entity]
    fact_passage: dict[tuple[str, str], str]  # (subject, relation) -> id of the passage stating it


def aliases(answer: str) -> list[str]:
    """Gold answers for an object: the name plus a short form ("Orvel River" -> "Orvel")."""
    golds = [answer]
    words = answer.split()
    if len(words) == 2 and words[1] in ("River", "Institute", *COMPANY_SUFFIXES):
        golds.append(words[0])
    return golds


class _Names:
    """Unique made-up words, so that every entity name is distinctive to a retriever."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[str] = set()

    def word(self, syllables: tuple[int, int] = (2, 3)) -> str:
        while True:
            parts = [self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) for _ in range(self.rng.randint(*syllables))]
            word = "".join(parts) + self.rng.choice(_CODAS)
            if 4 <= len(word) <= 11 and word not in self.used:
                self.used.add(word)
                return word.capitalize()


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _fact_sentence(rng: random.Random, relation: str, subject: str, obj: str) -> str:
    template = rng.choice(RELATIONS[relation].templates)
    return template.format(s=subject, o=obj, a=_article(obj))


@lru_cache(maxsize=64)
def _fact_regexes(relation: str, subject: str) -> tuple[re.Pattern[str], ...]:
    rel = RELATIONS[relation]
    patterns = []
    for template in rel.templates:
        escaped = re.escape(template)
        escaped = escaped.replace(re.escape("{s}"), r"(?<![\w'])" + re.escape(subject))
        escaped = escaped.replace(re.escape("{a}"), "an?")
        escaped = escaped.replace(re.escape("{o}"), f"(?P<o>{_OBJECT_PATTERNS[rel.object_pattern]})")
        patterns.append(re.compile(escaped))
    return tuple(patterns)


def extract_fact(text: str, subject: str, relation: str) -> str | None:
    """Read ``relation`` of ``subject`` from retrieved text, if a passage states it."""
    for pattern in _fact_regexes(relation, subject):
        match = pattern.search(text)
        if match:
            return match.group("o").strip()
    return None


def _fill(rng: random.Random, kind: str, subject: str, count: int, others: list[str]) -> list[str]:
    templates = rng.sample(_FILLER[kind], min(count, len(_FILLER[kind])))
    picks = [o for o in rng.sample(others, min(3, len(others))) if o != subject] + ["a local trader"] * 2
    values = dict(s=subject, n=rng.randint(2, 9), pop=f"{rng.randint(12, 900)},000",
                  century=rng.randint(11, 18), other=picks[0], other2=picks[1],
                  industry=rng.choice(INDUSTRIES), industry2=rng.choice(INDUSTRIES))
    return [t.format(**values) for t in templates]


def generate_corpus(
    seed: int = 0,
    num_people: int = 1200,
    num_cities: int = 150,
    num_countries: int = 25,
    num_companies: int = 150,
    num_universities: int = 40,
) -> GeneratedCorpus:
    """Build the corpus for ``seed`` (cached: the same arguments return the same object).

    The default sizes give about 3,000 passages and tens of thousands of questions; tests use
    smaller worlds. Every city belongs to a country, every country's capital is one of its cities,
    every company's founder is one of its employees.
    """
    return _generate(seed, num_people, num_cities, num_countries, num_companies, num_universities)


@lru_cache(maxsize=8)
def _generate(seed: int, num_people: int, num_cities: int, num_countries: int, num_companies: int,
              num_universities: int) -> GeneratedCorpus:
    if min(num_people, num_cities, num_countries, num_companies, num_universities) < 1 or num_cities < num_countries:
        raise ValueError("every entity count must be >= 1 and num_cities >= num_countries")
    if num_companies > num_people:
        raise ValueError("num_companies must be <= num_people (each company has a founder)")
    rng = random.Random(seed)
    names = _Names(rng)
    entities: dict[str, Entity] = {}

    def add(name: str, kind: str) -> Entity:
        entity = Entity(name, kind)
        entities[name] = entity
        return entity

    countries = [add(names.word(), "country") for _ in range(num_countries)]
    rivers = {c.name: [f"{names.word((2, 2))} River" for _ in range(3)] for c in countries}
    cities = []
    for i in range(num_cities):
        country = countries[i] if i < num_countries else rng.choice(countries)
        city = add(names.word(), "city")
        city.facts["country"] = country.name
        city.facts["river"] = rng.choice(rivers[country.name])
        if i < num_countries:
            country.facts["capital"] = city.name
        cities.append(city)
    universities = []
    for _ in range(num_universities):
        city = rng.choice(cities)
        university = f"{city.name} University"
        name = university if rng.random() < 0.5 and university not in entities else f"{names.word()} Institute"
        uni = add(name, "university")
        uni.facts["university_city"] = city.name
        universities.append(uni)
    first_names = [names.word((1, 2)) for _ in range(max(20, num_people // 8))]
    people = []
    for _ in range(num_people):
        person = add(f"{rng.choice(first_names)} {names.word()}", "person")
        person.facts.update(born_in=rng.choice(cities).name, birth_year=str(rng.randint(1920, 1995)),
                            alma_mater=rng.choice(universities).name, profession=rng.choice(PROFESSIONS))
        people.append(person)
    companies = []
    founders = rng.sample(people, num_companies)
    for founder in founders:
        company = add(f"{names.word()} {rng.choice(COMPANY_SUFFIXES)}", "company")
        company.facts.update(headquarters=rng.choice(cities).name, founder=founder.name,
                             founded_year=str(rng.randint(1850, 2015)))
        founder.facts["employer"] = company.name
        companies.append(company)
    for person in people:
        person.facts.setdefault("employer", rng.choice(companies).name)

    passages: list[Passage] = []
    fact_passage: dict[tuple[str, str], str] = {}

    def emit(title: str, relations: tuple[str, ...], filler_kind: str, fillers: int, others: list[str],
             lead: str = "") -> None:
        entity = entities[title]
        facts = [(r, _fact_sentence(rng, r, title, entity.facts[r])) for r in relations if r in entity.facts]
        sentences = [s for _, s in facts] + _fill(rng, filler_kind, title, fillers, others)
        rng.shuffle(sentences)
        passage = Passage(f"gen{seed}-{len(passages):05d}", title, " ".join(([lead] if lead else []) + sentences))
        passages.append(passage)
        for relation, _ in facts:
            fact_passage[(title, relation)] = passage.id

    city_people: dict[str, list[str]] = {c.name: [] for c in cities}
    for person in people:
        city_people[person.facts["born_in"]].append(person.name)
    person_names = [p.name for p in people]
    for country in countries:
        emit(country.name, ("capital",), "country", 3, [c.name for c in cities],
             lead=f"{country.name} is a sovereign state.")
    for city in cities:
        emit(city.name, ("country", "river"), "city_geo", 2, person_names)
        emit(city.name, (), "city_history", 3, city_people[city.name] or person_names)
    for uni in universities:
        emit(uni.name, ("university_city",), "university", 3, person_names,
             lead=f"{uni.name} is a public research university.")
    for company in companies:
        emit(company.name, ("headquarters", "founder", "founded_year"), "company", 3, [c.name for c in cities])
    for person in people:
        emit(person.name, ("born_in", "birth_year", "alma_mater"), "person_early", 2, person_names)
        emit(person.name, ("profession", "employer"), "person_career", 2, person_names)

    questions = _questions(seed, entities, fact_passage)
    return GeneratedCorpus(seed, passages, questions, entities, fact_passage)


def _questions(seed: int, entities: dict[str, Entity],
               fact_passage: dict[tuple[str, str], str]) -> list[dict[str, Any]]:
    """Every single-hop question, then every two-hop question, as task rows."""
    rows: list[dict[str, Any]] = []

    def row(question: str, answer: str, hops: int, subject: str, relations: list[str], gold: list[str],
            bridge: str) -> None:
        rows.append({
            "id": f"gen{seed}-q{len(rows):06d}",
            "question": question,
            "golden_answers": aliases(answer),
            "data_source": f"generated-{hops}hop",
            "gold_doc_ids": gold,
            "subject": subject,
            "relations": relations,
            "bridge": bridge,
        })

    for entity in entities.values():
        for key, value in entity.facts.items():
            row(RELATIONS[key].question.format(s=entity.name), value, 1, entity.name, [key],
                [fact_passage[(entity.name, key)]], "")
    for first, second, template in TWO_HOP:
        for entity in entities.values():
            bridge = entity.facts.get(first)
            if entity.kind != RELATIONS[first].subject_kind or bridge is None:
                continue
            answer = entities[bridge].facts.get(second)
            if answer is None:
                continue
            row(template.format(s=entity.name), answer, 2, entity.name, [first, second],
                [fact_passage[(entity.name, first)], fact_passage[(bridge, second)]], bridge)
    return rows
