"""Synthetic traffic for the drift tests: prose questions, code questions, and short or long
answers, drawn from templates with a seeded generator."""

from __future__ import annotations

import random

TOPICS = ["the Roman empire", "photosynthesis", "jazz music", "the French revolution", "volcanoes", "coral reefs",
          "the printing press", "honey bees", "the moon landing", "ancient Egypt", "climate in deserts",
          "medieval castles", "the Silk Road", "whales", "the human heart", "glaciers", "tea ceremonies",
          "the Renaissance", "rainforests", "olympic games", "the stock market", "bread baking", "migratory birds",
          "the solar system", "impressionist painting", "the Great Wall", "tides", "chess openings"]
PROSE = ["Could you tell me about {t}?", "Why is {t} important to people today?", "Write a short story about {t}.",
         "What are three surprising facts about {t}?", "Explain {t} to a ten year old.",
         "How did {t} change over the last century?", "Summarise what historians think about {t}.",
         "I am writing an essay on {t}; what should I mention?", "Describe {t} in a few friendly sentences.",
         "What would a traveller notice first about {t}?"]
NAMES = ["parse_rows", "merge_sorted", "fetch_user", "retry_call", "flatten", "to_snake_case", "sum_pairs",
         "read_config", "binary_search", "dedupe", "chunked", "slugify"]
CODE = ["Fix this bug: def {n}(xs):\n    return [x for x in xs if x > 0][0]",
        "Why does `{n}(a, b)` raise KeyError? d = {{}}; d[a] += b",
        "Convert to TypeScript: function {n}(items) {{ return items.map(i => i.id); }}",
        "Optimise: for (int i = 0; i < n; i++) {{ for (int j = 0; j < n; j++) {{ s += a[i][j]; }} }}",
        "Write a unit test for `def {n}(s: str) -> list[str]: return s.split(',')`",
        "SELECT * FROM orders WHERE user_id = $1 ORDER BY created_at; -- why is {n} slow?",
        "Refactor {n}: if (x != null && x.size() > 0) {{ return x.get(0); }} else {{ return null; }}",
        "What does this regex do in {n}? re.compile(r'^([a-z]+)-(\\d{{2,4}})$')"]
WORDS = ("the answer depends on context and there are several parts to consider here including history "
         "causes effects examples and what experts say about it today").split()


def prose_prompt(rng: random.Random) -> str:
    return rng.choice(PROSE).format(t=rng.choice(TOPICS))


def code_prompt(rng: random.Random) -> str:
    return rng.choice(CODE).format(n=rng.choice(NAMES))


def answer(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high))) + "."
