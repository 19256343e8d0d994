"""The built-in offline suites: ``builtin`` (written for this project), ``t0`` and ``selfinstruct`` (third-party tasks).

``builtin``: seventeen short-completion task families, each with several phrasings of its instruction. One phrasing per family is
deliberately vague ("Transform the word.", "Rewrite this date.") so that the instruction alone does
not say what the answer looks like: only exemplars of the same task do. That is what gives exemplar
selection a measurable effect on a small model.
"""

from __future__ import annotations

import functools
import gzip
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

from .data import Example

__all__ = ["SUITES", "Suite", "builtin_suite", "load_suite", "selfinstruct_suite", "suite_max_new_tokens", "t0_suite",
           "TASKS"]

_WORDS = ["apple", "river", "candle", "garden", "planet", "silver", "window", "forest", "pencil", "rocket",
          "castle", "butter", "monkey", "orange", "thunder", "mirror", "basket", "dragon", "lemon", "violin",
          "harbor", "jacket", "pepper", "tunnel", "meadow", "anchor", "bottle", "cactus", "falcon", "marble",
          "pocket", "shadow", "tiger", "wallet", "zebra", "copper", "island", "kettle", "ladder", "needle"]
_PLURALS = {"cat": "cats", "box": "boxes", "city": "cities", "mouse": "mice", "child": "children",
            "leaf": "leaves", "bus": "buses", "baby": "babies", "tooth": "teeth", "knife": "knives",
            "dog": "dogs", "church": "churches", "party": "parties", "foot": "feet", "wolf": "wolves",
            "glass": "glasses", "story": "stories", "man": "men", "goose": "geese", "wish": "wishes",
            "toy": "toys", "hero": "heroes", "lady": "ladies", "fox": "foxes", "woman": "women",
            "shelf": "shelves", "brush": "brushes", "penny": "pennies", "tree": "trees", "house": "houses"}
_ANTONYMS = {"hot": "cold", "big": "small", "fast": "slow", "happy": "sad", "light": "dark", "up": "down",
             "old": "young", "early": "late", "open": "closed", "rich": "poor", "hard": "soft", "wet": "dry",
             "full": "empty", "strong": "weak", "loud": "quiet", "high": "low", "long": "short",
             "clean": "dirty", "thick": "thin", "heavy": "light", "near": "far", "win": "lose",
             "buy": "sell", "push": "pull", "true": "false", "first": "last", "inside": "outside",
             "day": "night", "begin": "end", "always": "never"}
_PAST = {"walk": "walked", "go": "went", "eat": "ate", "see": "saw", "play": "played", "run": "ran",
         "write": "wrote", "jump": "jumped", "take": "took", "swim": "swam", "cook": "cooked", "buy": "bought",
         "think": "thought", "open": "opened", "sing": "sang", "drink": "drank", "fly": "flew",
         "talk": "talked", "bring": "brought", "sleep": "slept", "read": "read", "dance": "danced",
         "give": "gave", "find": "found", "smile": "smiled", "know": "knew", "carry": "carried",
         "teach": "taught", "climb": "climbed", "speak": "spoke"}
_CAPITALS = {"France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Spain": "Madrid", "Germany": "Berlin",
             "Canada": "Ottawa", "Egypt": "Cairo", "Kenya": "Nairobi", "Peru": "Lima", "Norway": "Oslo",
             "Greece": "Athens", "Russia": "Moscow", "China": "Beijing", "India": "New Delhi",
             "Brazil": "Brasilia", "Mexico": "Mexico City", "Ireland": "Dublin", "Portugal": "Lisbon",
             "Sweden": "Stockholm", "Poland": "Warsaw", "Austria": "Vienna", "Cuba": "Havana",
             "Chile": "Santiago", "Thailand": "Bangkok", "Turkey": "Ankara", "Finland": "Helsinki",
             "Argentina": "Buenos Aires", "Australia": "Canberra", "Denmark": "Copenhagen",
             "Belgium": "Brussels"}
_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
         "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December"]
_POSITIVE = ["wonderful", "delightful", "excellent", "charming", "brilliant", "lovely", "superb", "fantastic"]
_NEGATIVE = ["terrible", "awful", "boring", "disappointing", "dreadful", "horrible", "dull", "miserable"]
_REVIEWED = ["movie", "meal", "concert", "hotel", "book", "game", "trip", "show", "class", "service"]
_TOPICS = {
    "sports": ["The striker scored twice in the {} match.", "Our team won the {} tournament.",
               "She trained for the {} marathon."],
    "food": ["He baked a {} cake for dinner.", "The soup needs more {} spice.", "They ordered {} noodles."],
    "weather": ["A {} storm is expected tonight.", "The forecast says {} rain tomorrow.",
                "It was a {} and windy morning."],
    "music": ["The band played a {} song.", "She practiced the {} sonata on piano.",
              "The choir sang a {} hymn."],
    "technology": ["The new {} phone has a faster chip.", "He installed a {} software update.",
                   "The laptop runs a {} operating system."],
}
_FILLERS = ["local", "famous", "strange", "quiet", "bright", "sudden", "spicy", "gentle", "huge", "small"]
_NAMES = ["Alice", "Bob", "Carla", "Deniz", "Emil", "Fatima", "Goran", "Hana", "Ivan", "Julia", "Kofi", "Lena",
          "Mateo", "Nora", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tara"]


def _number_words(n: int) -> str:
    if n < 20:
        return _ONES[n]
    tens, ones = divmod(n, 10)
    return _TENS[tens] + ("" if ones == 0 else "-" + _ONES[ones])


Item = tuple[str, str]  # (input, output)
Generator = Callable[[random.Random, int], list[Item]]


def _from_lexicon(lexicon: dict[str, str]) -> Generator:
    def gen(rng: random.Random, n: int) -> list[Item]:
        keys = sorted(lexicon)
        rng.shuffle(keys)
        return [(k, lexicon[k]) for k in keys[:n]]
    return gen


def _word_map(fn: Callable[[str], str]) -> Generator:
    def gen(rng: random.Random, n: int) -> list[Item]:
        words = rng.sample(_WORDS, n)
        return [(w, fn(w)) for w in words]
    return gen


def _unique(rng: random.Random, n: int, make: Callable[[random.Random], Item]) -> list[Item]:
    items: dict[str, str] = {}
    while len(items) < n:
        inp, out = make(rng)
        items.setdefault(inp, out)
    return list(items.items())


def _numbers(rng: random.Random, n: int) -> list[Item]:
    return [(str(k), _number_words(k)) for k in rng.sample(range(21, 100), n)]


def _addition(rng: random.Random, n: int) -> list[Item]:
    def make(r: random.Random) -> Item:
        a, b = r.randint(2, 40), r.randint(2, 40)
        return f"{a} + {b}", str(a + b)
    return _unique(rng, n, make)


def _sort_words(rng: random.Random, n: int) -> list[Item]:
    def make(r: random.Random) -> Item:
        words = r.sample(_WORDS, 3)
        return ", ".join(words), ", ".join(sorted(words))
    return _unique(rng, n, make)


def _max_number(rng: random.Random, n: int) -> list[Item]:
    def make(r: random.Random) -> Item:
        nums = r.sample(range(1, 100), 4)
        return ", ".join(map(str, nums)), str(max(nums))
    return _unique(rng, n, make)


def _count_items(rng: random.Random, n: int) -> list[Item]:
    def make(r: random.Random) -> Item:
        words = r.sample(_WORDS, r.randint(2, 7))
        return ", ".join(words), str(len(words))
    return _unique(rng, n, make)


def _sentiment(rng: random.Random, n: int) -> list[Item]:
    def make(r: random.Random) -> Item:
        label = r.choice(["positive", "negative"])
        adjective = r.choice(_POSITIVE if label == "positive" else _NEGATIVE)
        return f"The {r.choice(_REVIEWED)} was {adjective}.", label
    return _unique(rng, n, make)


def _topic(rng: random.Random, n: int) -> list[Item]:
    def make(r: random.Random) -> Item:
        label = r.choice(sorted(_TOPICS))
        return r.choice(_TOPICS[label]).format(r.choice(_FILLERS)), label
    return _unique(rng, n, make)


def _dates(rng: random.Random, n: int) -> list[Item]:
    def make(r: random.Random) -> Item:
        y, m, d = r.randint(1990, 2030), r.randint(1, 12), r.randint(1, 28)
        return f"{y}-{m:02d}-{d:02d}", f"{_MONTHS[m - 1]} {d}, {y}"
    return _unique(rng, n, make)


def _acronym(rng: random.Random, n: int) -> list[Item]:
    def make(r: random.Random) -> Item:
        words = r.sample(_WORDS, 3)
        return " ".join(words), "".join(w[0].upper() for w in words)
    return _unique(rng, n, make)


def _to_json(rng: random.Random, n: int) -> list[Item]:
    def make(r: random.Random) -> Item:
        name, age = r.choice(_NAMES), r.randint(18, 80)
        return f"name {name}, age {age}", f'{{"name": "{name}", "age": {age}}}'
    return _unique(rng, n, make)


@dataclass(frozen=True)
class Task:
    name: str
    phrasings: tuple[str, ...]  # the last one is the vague phrasing
    generate: Generator


TASKS: tuple[Task, ...] = (
    Task("reverse", ("Reverse the letters of this word.", "Spell the word backwards.",
                     "Transform the word."), _word_map(lambda w: w[::-1])),
    Task("uppercase", ("Write the word in capital letters.", "Convert the word to uppercase.",
                       "Rewrite the word."), _word_map(str.upper)),
    Task("first_letter", ("What is the first letter of this word?", "Give the initial letter of the word.",
                          "Answer for this word."), _word_map(lambda w: w[0])),
    Task("plural", ("Give the plural form of this noun.", "Write the plural of the word.",
                    "Change the word."), _from_lexicon(_PLURALS)),
    Task("antonym", ("Give the opposite of this word.", "What is the antonym of the word?",
                     "Respond with one word."), _from_lexicon(_ANTONYMS)),
    Task("past_tense", ("Write the past tense of this verb.", "Give the simple past form of the verb.",
                        "Convert the verb."), _from_lexicon(_PAST)),
    Task("capital", ("What is the capital city of this country?", "Name the capital of the country.",
                     "Answer briefly."), _from_lexicon(_CAPITALS)),
    Task("number_words", ("Write the number in English words.", "Spell out this number.",
                          "Convert the number."), _numbers),
    Task("addition", ("Add the two numbers.", "Compute the sum.", "What is the result?"), _addition),
    Task("sort_words", ("Sort these words alphabetically.", "Put the words in alphabetical order.",
                        "Reorder the list."), _sort_words),
    Task("max_number", ("Which number in the list is the largest?", "Give the biggest number of the list.",
                        "Pick one from the list."), _max_number),
    Task("count_items", ("How many items are in this list?", "Count the words in the list.",
                         "Give a number for this list."), _count_items),
    Task("sentiment", ("Is the sentiment of this review positive or negative?",
                       "Classify the review as positive or negative.", "Label this sentence."), _sentiment),
    Task("topic", ("Which topic is this sentence about: sports, food, weather, music or technology?",
                   "Classify the topic of the sentence (sports, food, weather, music, technology).",
                   "Categorize this sentence."), _topic),
    Task("date_format", ("Write this ISO date as month name, day and year.",
                         "Convert the date to the long form, like March 4, 2021.", "Rewrite this date."),
         _dates),
    Task("acronym", ("Make an acronym from the first letters of the words.",
                     "Abbreviate the words to their capitalized initials.", "Shorten this."), _acronym),
    Task("to_json", ("Convert the record to a JSON object with keys name and age.",
                     "Write this as JSON.", "Format the record."), _to_json),
)


@dataclass(frozen=True)
class Suite:
    """Exemplar pool and query sets; inputs never repeat across the three."""

    pool: list[Example]
    train: list[Example]
    test: list[Example]


def builtin_suite(seed: int = 0, *, pool_per_task: int = 5, train_per_task: int = 14,
                  test_per_task: int = 7) -> Suite:
    """Generate the suite deterministically from ``seed``.

    The defaults give 17 tasks x (5 pool, 14 train, 7 test) = 85 / 238 / 119 examples. Every
    example's metadata holds its ``task`` and ``phrasing`` index (the last phrasing is the vague one).
    """
    per_task = pool_per_task + train_per_task + test_per_task
    rng = random.Random(seed)
    parts: tuple[list[Example], list[Example], list[Example]] = ([], [], [])
    for task in TASKS:
        task_rng = random.Random(rng.getrandbits(64))
        items = task.generate(task_rng, per_task)
        if len(items) < per_task:
            raise ValueError(f"task {task.name!r} has only {len(items)} distinct items, {per_task} asked")
        cuts = (0, pool_per_task, pool_per_task + train_per_task, per_task)
        for part, (lo, hi) in zip(parts, zip(cuts, cuts[1:])):
            for inp, out in items[lo:hi]:
                k = task_rng.randrange(len(task.phrasings))
                part.append(Example(task.phrasings[k], inp, out, {"task": task.name, "phrasing": k}))
    for part in parts:
        rng.shuffle(part)
    return Suite(*parts)


@functools.lru_cache(maxsize=1)
def _t0_records() -> tuple[dict[str, str], ...]:
    with resources.files(__package__).joinpath("suite_data", "t0.jsonl.gz").open("rb") as raw:
        return tuple(json.loads(line) for line in gzip.open(raw))


def t0_suite(seed: int = 0, *, pool_per_task: int = 12, train_per_task: int = 36,
             test_per_task: int = 18) -> Suite:
    """Third-party prompted tasks from the T0 training mixture, split by underlying example.

    35 prompt templates from 10 source datasets (reviews, commonsense / science / multi-hop QA,
    paraphrase, qualitative relations, social situations, processes): prompts of at most 300
    characters with short answers, bundled with a NOTICE (``suite_data/``) and rebuilt by
    ``benchmarks/data/build_t0_suite.py``. Each record's ``task`` is its template, ``dataset`` its
    source and ``example`` the underlying example it was written from: templates of one dataset
    re-use examples, so an example goes whole to one of pool / train / test (every template then
    gets up to the asked count per part; the defaults give 420 / 1,260 / 630).
    """
    need = (pool_per_task, train_per_task, test_per_task)
    groups: dict[str, list[dict[str, str]]] = {}
    for record in _t0_records():
        groups.setdefault(record["example"], []).append(record)
    rng = random.Random(seed)
    order = sorted(groups)
    rng.shuffle(order)
    have: dict[str, list[int]] = {}
    parts: tuple[list[Example], list[Example], list[Example]] = ([], [], [])
    for key in order:
        records = groups[key]
        tasks = {r["task"] for r in records}
        counts = [have.setdefault(t, [0, 0, 0]) for t in tasks]
        # The part whose templates (among this example's) lack most, relative to what they need.
        lack = [sum(max(0, need[k] - c[k]) for c in counts) / max(need[k], 1) for k in range(3)]
        k = max(range(3), key=lambda i: lack[i])
        if lack[k] <= 0:
            continue
        for record in records:
            count = have[record["task"]]
            if count[k] < need[k]:
                count[k] += 1
                metadata = {name: record[name] for name in ("task", "dataset", "example")}
                parts[k].append(Example(record["instruction"], "", record["output"], metadata))
    for part in parts:
        rng.shuffle(part)
    return Suite(*parts)


@functools.lru_cache(maxsize=1)
def _selfinstruct_records() -> tuple[dict, ...]:
    with resources.files(__package__).joinpath("suite_data", "selfinstruct.jsonl.gz").open("rb") as raw:
        return tuple(json.loads(line) for line in gzip.open(raw))


def selfinstruct_suite(seed: int = 0) -> Suite:
    """Human-written open-ended instructions (the Alpaca / Dolly kind), one different task per record.

    From the self-instruct repository (Apache-2.0; ``suite_data/NOTICE``, rebuilt by
    ``benchmarks/data/build_selfinstruct_suite.py``): the pool is its 175 seed tasks (the ones
    Alpaca was generated from), in their file order; the queries are 250 of its 252 expert-written
    user-oriented tasks (two repeat a seed task's instruction and are left out), halved into 125
    training and 125 test queries by ``seed``, stratified by the app that motivated each task. Every
    record is its own task (``task`` is its source id), so exemplars can help only with form, tone and
    length, and no instruction is in two parts. Answers run long: the suite's generation budget is
    ``suite_max_new_tokens("selfinstruct")``.
    """
    records = _selfinstruct_records()

    def example(record: dict) -> Example:
        metadata = {k: v for k, v in record.items() if k not in ("instruction", "input", "output")}
        return Example(record["instruction"], record["input"], record["output"], metadata)

    pool = [example(r) for r in records if r["source"] == "seed"]
    queries = [r for r in records if r["source"] == "user_oriented"]
    rng = random.Random(seed)
    rng.shuffle(queries)
    queries.sort(key=lambda r: r["motivation_app"])  # stable: shuffled within each app
    first = rng.randrange(2)  # dealt alternately, so each app's tasks go half to each part
    parts: tuple[list[Example], list[Example]] = ([], [])
    for i, record in enumerate(queries):
        parts[(i + first) % 2].append(example(record))
    for part in parts:
        rng.shuffle(part)
    return Suite(pool, *parts)


SUITES: dict[str, Callable[[int], Suite]] = {"builtin": builtin_suite, "t0": t0_suite,
                                             "selfinstruct": selfinstruct_suite}

# The generation budget a suite's answers need, where the package default (24 tokens) is too short:
# selfinstruct's query answers have a median of 44 SmolLM2 tokens and a 90th percentile of 189; the
# budget is that percentile capped at 128 (82% of the answers fit whole) to bound generation time.
_MAX_NEW_TOKENS = {"selfinstruct": 128}


def suite_max_new_tokens(source: object) -> int | None:
    """The default generation budget for queries from ``source``, if it is a built-in suite that states one.

    Callers whose user gave no ``max_new_tokens`` take this, else the package default.
    """
    return _MAX_NEW_TOKENS.get(source) if isinstance(source, str) else None


def load_suite(name: str, seed: int = 0) -> Suite:
    """A built-in suite by name (``"builtin"``, ``"t0"`` or ``"selfinstruct"``), split by ``seed``."""
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; built-in suites: {', '.join(SUITES)}")
    return SUITES[name](seed)
