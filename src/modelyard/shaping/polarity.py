"""Pairs of prompts that look alike but ask opposite things: a semantic cache must never answer one with the other.

Sentence embeddings put "how do I enable 2FA" and "how do I disable 2FA"
close together. This guard compares the words the two prompts do not share:
a negation on one side only, a known antonym pair, a prefix negation
("safe" / "unsafe"), different numbers or codes ("H2" / "H2S"), a name on
one side only ("Jefferson County" / "Crawford County"), or the same words in
another order ("ethanol to acid" / "acid to ethanol"), and vetoes the hit.
"""

from __future__ import annotations

import re

WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
CASED_WORD = re.compile(r"[A-Za-z][A-Za-z0-9]*")
NEGATIONS = frozenset({
    "not", "no", "never", "none", "nobody", "nothing", "neither", "nor", "without", "cannot", "cant", "dont", "doesnt", "isnt",
    "arent", "wasnt", "werent", "wont", "wouldnt", "shouldnt", "couldnt", "didnt", "hasnt", "havent", "hadnt", "mustnt", "non", "anti",
})
ANTONYMS = (
    ("enable", "disable"), ("enabled", "disabled"), ("allow", "deny"), ("allow", "block"), ("accept", "reject"), ("add", "remove"),
    ("increase", "decrease"), ("raise", "lower"), ("before", "after"), ("start", "stop"), ("on", "off"), ("true", "false"),
    ("buy", "sell"), ("max", "min"), ("maximum", "minimum"), ("best", "worst"), ("more", "less"), ("most", "least"), ("up", "down"),
    ("open", "close"), ("win", "lose"), ("love", "hate"), ("pros", "cons"), ("include", "exclude"), ("import", "export"),
    ("encrypt", "decrypt"), ("upload", "download"), ("install", "uninstall"), ("login", "logout"), ("push", "pull"),
    ("cheap", "expensive"), ("good", "bad"), ("better", "worse"), ("high", "low"), ("higher", "lower"), ("fast", "slow"),
    ("positive", "negative"), ("above", "below"), ("first", "last"), ("old", "new"), ("hot", "cold"), ("always", "never"),
    ("can", "cannot"), ("should", "shouldnt"), ("is", "isnt"), ("do", "dont"), ("does", "doesnt"), ("with", "without"),
    ("men", "women"), ("male", "female"), ("boy", "girl"), ("he", "she"), ("his", "her"), ("pass", "fail"), ("safe", "dangerous"),
)
OPPOSITE = frozenset({*ANTONYMS, *((b, a) for a, b in ANTONYMS)})
NEGATING_PREFIXES = ("un", "in", "im", "il", "ir", "dis", "non", "de")


def words(text: str) -> list[str]:
    return [w.replace("'", "") for w in WORD.findall(text.lower())]


def _negations(tokens: list[str]) -> int:
    return sum(1 for t in tokens if t in NEGATIONS)


def _prefix_negated(a: str, b: str) -> bool:
    """``b`` is ``a`` with a negating prefix (safe/unsafe, legal/illegal, able/disable)."""
    return len(a) >= 3 and any(b == p + a or b == p + "-" + a for p in NEGATING_PREFIXES)


def opposition(query: str, cached: str) -> str | None:
    """Why ``query`` must not be answered by ``cached`` (None: no sign they ask opposite things)."""
    q, c = words(query), words(cached)
    if _negations(q) % 2 != _negations(c) % 2:
        return "negation on one side only"
    only_q, only_c = set(q) - set(c), set(c) - set(q)
    for a in only_q:
        for b in only_c:
            if (a, b) in OPPOSITE:
                return f"opposites: {a!r} vs {b!r}"
            if _prefix_negated(a, b) or _prefix_negated(b, a):
                return f"negated by prefix: {a!r} vs {b!r}"
    if any(ch.isdigit() for ch in "".join(only_q | only_c)):
        return "different numbers or codes"
    names = _names(query) ^ _names(cached)
    if names - set(q) or names - set(c):
        return "a name on one side only"
    if q != c and sorted(q) == sorted(c):
        return "the same words in another order"
    return None


def _names(text: str) -> set[str]:
    """Capitalised words not at a sentence start (lower-cased): the names a question is about."""
    found = set()
    for sentence in re.split(r"[.?!]\s+", text):
        for word in CASED_WORD.findall(sentence)[1:]:
            if word[0].isupper() and word != "I":
                found.add(word.lower())
    return found
