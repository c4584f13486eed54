"""Personal data in text: find it, redact it (reversibly when asked), and put it back into an answer.

Detectors are regular expressions with a validity check where the format has
one: credit-card numbers pass Luhn, IBANs pass ISO 7064 mod-97, SSNs obey the
SSA's never-issued ranges, IPv4 octets are at most 255. Overlapping matches
keep the longest (an IBAN's digits are not also a phone number).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass

ENTITY_TYPES = ("EMAIL", "CREDIT_CARD", "IBAN", "SSN", "IP_ADDRESS", "PHONE")


@dataclass(frozen=True, slots=True)
class Finding:
    entity: str
    start: int
    end: int
    text: str


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(text: str) -> bool:
    compact = text.replace(" ", "").upper()
    if not 15 <= len(compact) <= 34:
        return False
    moved = compact[4:] + compact[:4]
    number = "".join(str(int(ch, 36)) for ch in moved)
    return int(number) % 97 == 1


def ssn_ok(text: str) -> bool:
    area, group, serial = text[0:3], text[4:6], text[7:11]
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def ipv4_ok(text: str) -> bool:
    return all(int(part) <= 255 and (part == "0" or not part.startswith("0")) for part in text.split("."))


def ipv6_ok(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def card_ok(text: str) -> bool:
    digits = re.sub(r"[ -]", "", text)
    return 12 <= len(digits) <= 19 and luhn_ok(digits)  # Maestro numbers start at 12 digits


def phone_ok(text: str) -> bool:
    digits = re.sub(r"\D", "", text)
    return 10 <= len(digits) <= 15 if text.startswith("+") else 10 <= len(digits) <= 11


@dataclass(frozen=True, slots=True)
class Detector:
    entity: str
    pattern: re.Pattern[str]
    valid: Callable[[str], bool]


DETECTORS = (
    Detector("EMAIL", re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])"), lambda _: True),
    Detector("IBAN", re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b"), iban_ok),
    Detector("CREDIT_CARD", re.compile(r"(?<![\d-])\d{4}(?:[ -]?\d{4}){2}(?:[ -]?\d{1,7})?(?![\d-])|(?<![\d-])\d{4}[ -]?\d{6}[ -]?\d{5}(?![\d-])"), card_ok),
    Detector("SSN", re.compile(r"(?<![\d-])\d{3}-\d{2}-\d{4}(?![\d-])"), ssn_ok),
    Detector("IP_ADDRESS", re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?!\d|\.\d)"), ipv4_ok),
    Detector("IP_ADDRESS", re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){2,7}(?::|[0-9A-Fa-f]{1,4})(?:[0-9A-Fa-f]{0,4}:?)*(?![\w:])"), ipv6_ok),
    Detector(
        "PHONE",
        re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)|\d{2,4})(?:[ .-]?\d{2,4}){1,4}(?:\s?(?:x|ext\.?)\s?\d{1,5})?(?![\w])"),
        phone_ok,
    ),
)


def find(text: str, entities: frozenset[str] | None = None) -> list[Finding]:
    """Every valid entity in ``text``, left to right, overlaps resolved in favour of the longer match."""
    candidates = []
    for detector in DETECTORS:
        if entities is not None and detector.entity not in entities:
            continue
        for match in detector.pattern.finditer(text):
            if detector.valid(match.group()):
                candidates.append(Finding(detector.entity, match.start(), match.end(), match.group()))
    candidates.sort(key=lambda f: (f.start, -(f.end - f.start)))
    kept: list[Finding] = []
    for finding in sorted(candidates, key=lambda f: -(f.end - f.start)):
        if all(finding.end <= k.start or finding.start >= k.end for k in kept):
            kept.append(finding)
    return sorted(kept, key=lambda f: f.start)


@dataclass
class Redaction:
    """Placeholders handed out for one request, so the answer can be given its values back."""

    values: dict[str, str]  # placeholder -> original

    def restore(self, text: str) -> str:
        for placeholder, original in self.values.items():
            text = text.replace(placeholder, original)
        return text


def redact(text: str, findings: list[Finding], redaction: Redaction | None) -> str:
    """``text`` with each finding replaced: ``[EMAIL_1]`` style placeholders (numbered per request when reversible)."""
    out, last = [], 0
    for finding in findings:
        out.append(text[last:finding.start])
        if redaction is None:
            out.append(f"[{finding.entity}]")
        else:
            out.append(_placeholder(redaction, finding))
        last = finding.end
    out.append(text[last:])
    return "".join(out)


def _placeholder(redaction: Redaction, finding: Finding) -> str:
    for placeholder, original in redaction.values.items():
        if original == finding.text:
            return placeholder
    count = sum(1 for p in redaction.values if p.startswith(f"[{finding.entity}_"))
    placeholder = f"[{finding.entity}_{count + 1}]"
    redaction.values[placeholder] = finding.text
    return placeholder


class StreamRestorer:
    """Puts values back into a streamed answer, holding back at most one placeholder's length of text."""

    def __init__(self, redaction: Redaction) -> None:
        self.redaction = redaction
        self.held = ""
        self.window = max((len(p) for p in redaction.values), default=0)

    def feed(self, text: str) -> str:
        """The part of the stream so far that can be sent now."""
        self.held += text
        if not self.redaction.values:
            out, self.held = self.held, ""
            return out
        restored = self.redaction.restore(self.held)
        cut = restored.rfind("[")
        # a "[" near the end may open a placeholder not yet complete: keep it back
        if cut != -1 and len(restored) - cut < self.window and "]" not in restored[cut:]:
            out, self.held = restored[:cut], restored[cut:]
        else:
            out, self.held = restored, ""
        return out

    def flush(self) -> str:
        out, self.held = self.redaction.restore(self.held), ""
        return out


class StreamScanner:
    """Redacts entities in a streamed answer, holding back only the tail that could still grow into one."""

    def __init__(self, entities: frozenset[str] | None, hold: int = 64) -> None:
        self.entities = entities
        self.hold = hold
        self.held = ""

    def feed(self, text: str) -> str:
        self.held += text
        if len(self.held) <= self.hold:
            return ""
        findings = find(self.held, self.entities)
        cut = len(self.held) - self.hold
        for f in findings:  # never cut through an entity
            if f.start < cut < f.end:
                cut = f.start
        head = [f for f in findings if f.end <= cut]
        out = redact(self.held[:cut], head, None)
        self.held = self.held[cut:]
        return out

    def flush(self) -> str:
        out = redact(self.held, find(self.held, self.entities), None)
        self.held = ""
        return out
