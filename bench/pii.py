"""The PII filter on a seeded synthetic corpus: recall and precision per entity type, and the time it adds.

    .venv/bin/python bench/pii.py [--messages 2000] [--seed 11]

Faker (seeded) writes ordinary sentences and mixes in known entities, each in
one of the formats people write it (e-mail addresses; US and international
phone numbers; card numbers with and without separators; IBANs compact and in
groups of four; IPv4 and IPv6 addresses; SSNs), plus distractors that look
numeric but are not personal data (prices, years, versions, order numbers,
times, ZIP codes). A finding counts when its type and its exact span match a
planted entity. Latency: the filter's work on one 2,000-character prompt
(find and redact), p50 and p95 over ``--timed`` prompts. Writes
bench/results/pii.json and prints one JSON object on its last line.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from faker import Faker

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, median, percentile, table, write_result  # noqa: E402

from modelyard.shaping import pii  # noqa: E402

GOAL = 0.95


def _card(fake: Faker, rng: random.Random) -> str:
    number = fake.credit_card_number()
    if rng.random() < 0.5 and len(number) == 16:
        sep = rng.choice([" ", "-"])
        return sep.join(number[i:i + 4] for i in range(0, 16, 4))
    return str(number)


def _iban(fake: Faker, rng: random.Random) -> str:
    number = str(fake.iban())
    return " ".join(number[i:i + 4] for i in range(0, len(number), 4)) if rng.random() < 0.5 else number


def _phone(fake: Faker, rng: random.Random) -> str:
    digits = [str(rng.randint(2, 9))] + [str(rng.randint(0, 9)) for _ in range(9)]
    area, mid, last = "".join(digits[:3]), "".join(digits[3:6]), "".join(digits[6:])
    formats = [f"({area}) {mid}-{last}", f"{area}-{mid}-{last}", f"{area}.{mid}.{last}", f"+1 {area} {mid} {last}", f"+1-{area}-{mid}-{last}",
               f"+44 20 {rng.randint(1000, 9999)} {rng.randint(1000, 9999)}", f"+49 30 {rng.randint(100000, 999999)}{rng.randint(10, 99)}"]
    return rng.choice(formats)


def _ip(fake: Faker, rng: random.Random) -> str:
    return str(fake.ipv4()) if rng.random() < 0.7 else str(fake.ipv6())


MAKERS = {
    "EMAIL": lambda fake, rng: str(fake.email()),
    "PHONE": _phone,
    "CREDIT_CARD": _card,
    "IBAN": _iban,
    "IP_ADDRESS": _ip,
    "SSN": lambda fake, rng: str(fake.ssn()),
}
INTROS = {
    "EMAIL": ["write to {}", "my email is {}", "cc {} on it"],
    "PHONE": ["call me at {}", "my number is {}", "phone: {}"],
    "CREDIT_CARD": ["charge card {}", "my card number is {}", "use {} for the payment"],
    "IBAN": ["wire it to {}", "IBAN {}", "the account is {}"],
    "IP_ADDRESS": ["the server at {} is down", "blocked from {}", "login came from {}"],
    "SSN": ["my SSN is {}", "social security number {}", "SSN: {}"],
}


def _distractor(rng: random.Random) -> str:
    return rng.choice([
        f"it costs ${rng.randint(1, 4999)}.{rng.randint(10, 99)}", f"back in {rng.randint(1950, 2030)}", f"version {rng.randint(1, 9)}.{rng.randint(0, 20)}.{rng.randint(0, 9)}",
        f"order #{rng.randint(10000, 9999999)}", f"at {rng.randint(1, 12)}:{rng.randint(10, 59)} pm", f"ZIP {rng.randint(10000, 99999)}",
        f"room {rng.randint(100, 999)}", f"{rng.randint(2, 99)} items", f"on {rng.randint(2000, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        f"ticket {rng.randint(100, 999)}-{rng.randint(1000, 9999)}",
    ])


def corpus(count: int, seed: int) -> list[tuple[str, list[tuple[str, int, int]]]]:
    """Messages with the entities planted in them (type, start, end)."""
    fake, rng = Faker("en_US"), random.Random(seed)
    Faker.seed(seed)
    messages = []
    for _ in range(count):
        parts: list[str] = []
        planted: list[tuple[str, int, int]] = []
        length = 0
        for _ in range(rng.randint(2, 6)):
            roll = rng.random()
            if roll < 0.45:
                entity = rng.choice(list(MAKERS))
                value = MAKERS[entity](fake, rng)
                intro = rng.choice(INTROS[entity])
                before, after = intro.split("{}")
                start = length + len(before)
                planted.append((entity, start, start + len(value)))
                piece = before + value + after
            elif roll < 0.65:
                piece = _distractor(rng)
            else:
                piece = str(fake.sentence(nb_words=rng.randint(6, 16))).rstrip(".")
            parts.append(piece)
            length += len(piece) + 2
        messages.append((". ".join(parts) + ".", planted))
    return messages


def score(messages: list[tuple[str, list[tuple[str, int, int]]]]) -> dict[str, dict[str, Any]]:
    true_pos: Counter[str] = Counter()
    planted_count: Counter[str] = Counter()
    found_count: Counter[str] = Counter()
    misses: dict[str, list[str]] = {}
    for text, planted in messages:
        found = {(f.entity, f.start, f.end) for f in pii.find(text)}
        expected = set(planted)
        for entity, _, _ in expected:
            planted_count[entity] += 1
        for entity, _, _ in found:
            found_count[entity] += 1
        for hit in found & expected:
            true_pos[hit[0]] += 1
        for miss in expected - found:
            misses.setdefault(miss[0], []).append(text[miss[1]:miss[2]])
    return {
        entity: {
            "planted": planted_count[entity], "found": found_count[entity], "true_positives": true_pos[entity],
            "recall": true_pos[entity] / planted_count[entity] if planted_count[entity] else None,
            "precision": true_pos[entity] / found_count[entity] if found_count[entity] else None,
            "missed_examples": misses.get(entity, [])[:5],
        }
        for entity in pii.ENTITY_TYPES
    }


def latency(messages: list[tuple[str, list[tuple[str, int, int]]]], timed: int) -> dict[str, Any]:
    """The filter's work on 2,000-character prompts (several corpus messages joined)."""
    prompts, current = [], ""
    for text, _ in messages * 10:
        current += text + " "
        if len(current) >= 2000:
            prompts.append(current[:2000])
            current = ""
        if len(prompts) >= timed:
            break
    times = []
    for prompt in prompts:
        t0 = time.perf_counter()
        redaction = pii.Redaction({})
        pii.redact(prompt, pii.find(prompt), redaction)
        times.append((time.perf_counter() - t0) * 1000)
    return {"prompts": len(prompts), "chars": 2000, "p50_ms": median(times), "p95_ms": percentile(times, 95)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--timed", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    messages = corpus(args.messages, args.seed)
    scores = score(messages)
    timing = latency(messages, args.timed)
    rows = [("entity", "planted", "found", "recall", "precision", "missed (examples)")]
    for entity, s in scores.items():
        rows.append((entity, str(s["planted"]), str(s["found"]), f"{s['recall']:.3f}", f"{s['precision']:.3f}", "; ".join(s["missed_examples"][:3])))
    print(table(rows))
    print(f"\nadded latency on {timing['prompts']} prompts of {timing['chars']} characters: p50 {timing['p50_ms']:.3f} ms, p95 {timing['p95_ms']:.3f} ms")
    met = all((s["recall"] or 0) >= GOAL and (s["precision"] or 0) >= GOAL for s in scores.values()) and timing["p95_ms"] <= 5.0
    summary = {"messages": len(messages), "min_recall": min(s["recall"] for s in scores.values()), "min_precision": min(s["precision"] for s in scores.values()),
               "p95_ms": timing["p95_ms"], "goals_met": met}
    write_result("pii", {"seed": args.seed, "machine": machine(), "entities": scores, "latency": timing, "summary": summary})
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
