"""Personal data in text → placeholders, with a count per kind.

Patterns are deliberately conservative where numbers are common (reasoning data is full of them): a card number
must pass the Luhn check, an IBAN its mod-97 check, a phone number needs separators or a leading "+" and 8-15
digits, dates are left alone. Names come from a given list, or optionally from a capitalised-words heuristic.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

PLACEHOLDER = {"email": "[EMAIL]", "phone": "[PHONE]", "card": "[CARD]", "id": "[ID]", "ip": "[IP]", "name": "[NAME]"}

EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
SSN = re.compile(r"(?<![\d-])\d{3}-\d{2}-\d{4}(?![\d-])")
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")
IPV4 = re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)(?![\d.])")
PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,4}){1,4}(?!\w)")
DATE = re.compile(r"^\d{4}[-./]\d{1,2}[-./]\d{1,2}$|^\d{1,2}[-./]\d{1,2}[-./]\d{2,4}$")
SENTENCE_START = re.compile(r"(?:^|[.!?:]\s+)$")
CAPITALISED_RUN = re.compile(r"\b[A-Z][a-z]+(?:[ \t]+[A-Z][a-z]+)+\b")
NOT_NAMES = frozenset(
    "The A An And Or But If In On At Of For To From By With This That These Those It Its My Our Your Their His Her "
    "We You They He She I Is Are Was Were Be Let Then So Yes No Not Step First Second Third Next Finally Answer "
    "Question Monday Tuesday Wednesday Thursday Friday Saturday Sunday January February March April May June July "
    "August September October November December Mr Mrs Ms Dr".split()
)


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    s = iban.replace(" ", "")
    s = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in s)) % 97 == 1


def _sub(pattern: re.Pattern, text: str, kind: str, counts: Counter, keep=lambda m: True) -> str:
    def repl(m: re.Match) -> str:
        if not keep(m):
            return m.group(0)
        counts[kind] += 1
        return PLACEHOLDER[kind]

    return pattern.sub(repl, text)


def _card(m: re.Match) -> bool:
    digits = re.sub(r"\D", "", m.group(0))
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


def _phone(m: re.Match) -> bool:
    s = m.group(0)
    digits = sum(c.isdigit() for c in s)
    separators = sum(c in " .-" for c in s)
    return 8 <= digits <= 15 and (s.startswith(("+", "(")) or separators >= 2) and not DATE.match(s)


def _names(text: str, names: Iterable[str], heuristic: bool, counts: Counter) -> str:
    names = sorted({n for n in names if n.strip()}, key=len, reverse=True)
    if names:
        text = _sub(re.compile(r"\b(?:" + "|".join(map(re.escape, names)) + r")\b"), text, "name", counts)
    if heuristic:

        def person(m: re.Match) -> str:
            words = m.group(0).split()
            if any(w in NOT_NAMES for w in words):
                return m.group(0)
            # at a sentence start the first word is capitalised anyway: "Ask Maria Lopez" names only the last two
            if len(words) > 2 and SENTENCE_START.search(text, 0, m.start()) is not None:
                head, words = words[0] + " ", words[1:]
            else:
                head = ""
            counts["name"] += 1
            return head + PLACEHOLDER["name"]

        text = CAPITALISED_RUN.sub(person, text)
    return text


def anonymise(
    text: str,
    kinds: Iterable[str] = ("email", "phone", "card", "id"),
    names: Iterable[str] = (),
    name_heuristic: bool = False,
) -> tuple[str, Counter]:
    """The text with personal data replaced, and how many of each kind were replaced."""
    kinds, counts = set(kinds), Counter()
    # Order matters: e-mails hold digits; cards, IDs and IPs would otherwise be read as phone numbers.
    if "email" in kinds:
        text = _sub(EMAIL, text, "email", counts)
    if "card" in kinds:
        text = _sub(CARD, text, "card", counts, _card)
    if "id" in kinds:
        text = _sub(SSN, text, "id", counts)
        text = _sub(IBAN, text, "id", counts, lambda m: iban_valid(m.group(0)))
    if "ip" in kinds:
        text = _sub(IPV4, text, "ip", counts)
    if "phone" in kinds:
        text = _sub(PHONE, text, "phone", counts, _phone)
    if "name" in kinds:
        text = _names(text, names, name_heuristic, counts)
    return text, counts
