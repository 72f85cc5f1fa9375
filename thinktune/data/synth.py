"""`thinktune data synth GRAPH -o synth/`: reasoning QA from a knowledge graph, each answer verifiable by
construction, each reasoning trace built from the facts that answer it.

    thinktune data synth bundled:finance_graph -o synth/ --test-fraction 0.2 --seed 0

Two kinds of question (pure functions over a `Graph`, seeded):
- multi_hop: a path of 2–3 relations from an entity, each hop forward (the CEO of X) or inverse (the company that
  acquired X), kept only when every hop leads to exactly one entity and no entity repeats — the answer is unique.
- multi_condition: the entities meeting 2–3 conditions on different relations at once (equal to a value; below or
  above a number where every value of the relation is a number), kept when 1..max_answers entities qualify (listed
  fully, alphabetically) and every condition is needed (dropping any one changes the answer set).
The trace states one fact (triple) per step and ends with the answer; the reply boxes it. `split` deals questions to
train/test by held-out entities (see `split_by_entity`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from thinktune.data.graph import Graph, Triple
from thinktune.errors import ConfigError

Kind = Literal["multi_hop", "multi_condition"]
SplitKey = Literal["answer", "path"]
SPLIT_KEYS = ("answer", "path")


@dataclass(frozen=True)
class Words:
    """How a relation is said. `{x}`, `{h}`, `{t}`, `{v}` are filled by plain replacement (names may hold braces)."""

    forward: str  # the tail, named from the head: "the CEO of {x}"
    inverse: str  # the head, named from the tail: "the company that acquired {x}"
    fact: str  # one triple as a sentence: "The CEO of {h} is {t}."
    equals: str  # a condition on a head: "is in the {v} sector"
    below: str  # numbers only: "was founded before {v}"
    above: str
    subject: str = "entity"  # what the heads are
    person: bool = False  # the tails are people: ask "Who"


def _words(forward, inverse, fact, equals, subject="company", person=False, below=None, above=None) -> Words:
    return Words(forward, inverse, fact, equals, below or "", above or "", subject, person)


WORDS = {
    "ceo": _words("the CEO of {x}", "the company whose CEO is {x}", "The CEO of {h} is {t}.", "has {v} as its CEO",
                  person=True),
    "sector": _words("the sector of {x}", "the company in the {x} sector", "{h} is in the {t} sector.",
                     "is in the {v} sector"),
    "founded": _words("the founding year of {x}", "the company founded in {x}", "{h} was founded in {t}.",
                      "was founded in {v}", below="was founded before {v}", above="was founded after {v}"),
    "headquarters": _words("the headquarters city of {x}", "the company headquartered in {x}",
                           "{h} has its headquarters in {t}.", "has its headquarters in {v}"),
    "acquired": _words("the company acquired by {x}", "the company that acquired {x}", "{h} acquired {t}.",
                       "acquired {v}"),
    "employees": _words("the number of employees of {x}", "the company with {x} employees", "{h} has {t} employees.",
                        "has {v} employees", below="has fewer than {v} employees", above="has more than {v} employees"),
    "country": _words("the country of {x}", "the city in {x}", "{h} is in {t}.", "is in {v}", subject="city"),
    "born_in": _words("the birthplace of {x}", "the person born in {x}", "{h} was born in {t}.", "was born in {v}",
                      subject="person"),
}  # fmt: skip


def words(relation: str, graph: Graph) -> Words:
    """The relation's templates, or the generic ones: 'the <relation> of <entity>'."""
    known = WORDS.get(relation.strip().lower().replace(" ", "_"))
    if known is not None:  # a table's key column names the heads: 'Which ticker ...'
        return dataclasses.replace(known, subject=graph.subjects[relation]) if relation in graph.subjects else known
    name = relation.replace("_", " ")
    subject = graph.subjects.get(relation, "entity")
    return Words(
        forward=f"the {name} of {{x}}",
        inverse=f"the {subject} whose {name} is {{x}}",
        fact=f"The {name} of {{h}} is {{t}}.",
        equals=f"has {name} {{v}}",
        below=f"has {name} below {{v}}",
        above=f"has {name} above {{v}}",
        subject=subject,
    )


def fill(template: str, **values: str) -> str:
    for k, v in values.items():
        template = template.replace("{" + k + "}", v)
    return template


def capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def fact(t: Triple, graph: Graph) -> str:
    return capital(fill(words(t.relation, graph).fact, h=t.head, t=t.tail))


def number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


@dataclass(frozen=True)
class Hop:
    relation: str
    inverse: bool  # walk from tail to head


@dataclass(frozen=True)
class Condition:
    relation: str
    op: Literal["=", "<", ">"]
    value: str

    def holds(self, tail: str) -> bool:
        if self.op == "=":
            return tail == self.value
        a, b = number(tail), number(self.value)
        return a is not None and b is not None and (a < b if self.op == "<" else a > b)

    def phrase(self, graph: Graph) -> str:
        w = words(self.relation, graph)
        return fill({"=": w.equals, "<": w.below, ">": w.above}[self.op], v=self.value)

    def to_json(self) -> dict[str, str]:
        return {"relation": self.relation, "op": self.op, "value": self.value}


@dataclass(frozen=True)
class QA:
    kind: Kind
    question: str
    steps: tuple[str, ...]  # the reasoning: one fact per step, the last step states the answer
    content: str  # the reply: the answer in \boxed{}
    answer: str
    answers: tuple[str, ...]  # the answer entities (several for a listed multi-condition answer)
    triples: tuple[Triple, ...]  # every fact the trace states, in order: the answer path
    hops: int  # multi_hop: relations walked; multi_condition: 1 (each condition is one fact away)
    path: tuple[str, ...] = ()  # multi_hop: the entities visited, start to answer
    relations: tuple[Hop, ...] = ()  # multi_hop
    conditions: tuple[Condition, ...] = ()  # multi_condition
    rewritten_by: str | None = None  # the teacher that rewrote question and reasoning

    @property
    def id(self) -> str:
        what = repr((self.path, self.relations, self.conditions))  # the template's content: stable under rewording
        return f"{self.kind}-{hashlib.sha1(what.encode()).hexdigest()[:12]}"

    def key_entities(self, key: SplitKey) -> frozenset[str]:
        """What the split holds out: the answer entities, or every entity on the answer path (multi_hop: start,
        intermediates, answer; multi_condition: the answer entities and the condition values)."""
        if key == "answer":
            return frozenset(self.answers)
        if self.kind == "multi_hop":
            return frozenset(self.path)
        return frozenset(self.answers) | {c.value for c in self.conditions}


def _joined(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


# ---- multi-hop ----


def hop_paths(graph: Graph, max_hops: int) -> Iterator[tuple[tuple[str, ...], tuple[Hop, ...], tuple[Triple, ...]]]:
    """(entities, hops, triples) of every path of 2..max_hops hops where each hop has exactly one next entity and
    no entity repeats, in a deterministic order (start entity, then relation, forward before inverse)."""
    steps: dict[str, list[Hop]] = {}
    for h, r in graph.out:
        steps.setdefault(h, []).append(Hop(r, False))
    for r, t in graph.into:
        steps.setdefault(t, []).append(Hop(r, True))

    def walk(nodes, hops, triples):
        if len(hops) >= 2:
            yield nodes, hops, triples
        if len(hops) == max_hops:
            return
        here = nodes[-1]
        for hop in sorted(steps.get(here, []), key=lambda s: (s.relation, s.inverse)):
            nxt = graph.heads(hop.relation, here) if hop.inverse else graph.tails(here, hop.relation)
            if len(nxt) != 1 or nxt[0] in nodes:
                continue
            t = Triple(nxt[0], hop.relation, here) if hop.inverse else Triple(here, hop.relation, nxt[0])
            yield from walk((*nodes, nxt[0]), (*hops, hop), (*triples, t))

    for entity in graph.entities:
        yield from walk((entity,), (), ())


def multi_hop_qa(graph: Graph, nodes: tuple[str, ...], hops: tuple[Hop, ...], triples: tuple[Triple, ...]) -> QA:
    phrases, np = [], nodes[0]
    for hop in hops:
        w = words(hop.relation, graph)
        np = fill(w.inverse if hop.inverse else w.forward, x=np)
        phrases.append(np)
    last = words(hops[-1].relation, graph)
    who = last.subject == "person" if hops[-1].inverse else last.person
    answer = nodes[-1]
    steps = [
        f"Step {i}: {fact(t, graph)} So {phrase} is {node}."
        for i, (t, phrase, node) in enumerate(zip(triples, phrases, nodes[1:], strict=True), 1)
    ]
    steps.append(f"Step {len(steps) + 1}: The answer is {answer}.")
    return QA(
        kind="multi_hop",
        question=f"{'Who' if who else 'What'} is {np}?",
        steps=tuple(steps),
        content=f"{capital(np)} is \\boxed{{{answer}}}.",
        answer=answer,
        answers=(answer,),
        triples=triples,
        hops=len(hops),
        path=nodes,
        relations=hops,
    )


# ---- multi-condition ----


def satisfying(graph: Graph, c: Condition) -> frozenset[str]:
    return frozenset(h for h in graph.heads_of[c.relation] if any(c.holds(t) for t in graph.tails(h, c.relation)))


def candidate_conditions(graph: Graph) -> list[Condition]:
    """Conditions that split their relation's heads: at least 2 qualify, not all. A condition met by one entity
    alone would make any other condition redundant, so it could never be needed in a multi-condition question."""
    out = []
    for r in graph.relations:
        heads = len(graph.heads_of[r])
        values = sorted({t.tail for t in graph.triples if t.relation == r})
        numbers = [number(v) for v in values]
        ops: list[tuple[Literal["=", "<", ">"], str]] = [("=", v) for v in values]
        if len(values) >= 3 and None not in numbers:
            ordered = [v for _, v in sorted(zip(numbers, values, strict=True))]
            ops += [(op, v) for v in ordered for op in ("<", ">")]
        for op, v in ops:
            c = Condition(r, op, v)
            if 2 <= len(satisfying(graph, c)) < heads:
                out.append(c)
    return out


def multi_condition_sets(graph: Graph, max_conditions: int, max_answers: int) -> Iterator[tuple[Condition, ...]]:
    """Condition sets (distinct relations) whose answer has 1..max_answers entities and needs every condition. Of
    sets whose numeric conditions differ only in thresholds that keep and rule out the same entities, the first."""
    conds = candidate_conditions(graph)
    sats = {c: satisfying(graph, c) for c in conds}
    seen = set()
    for size in range(2, max_conditions + 1):
        for combo in itertools.combinations(conds, size):
            if len({c.relation for c in combo}) < size:
                continue
            answer = frozenset.intersection(*(sats[c] for c in combo))
            if not 1 <= len(answer) <= max_answers:
                continue
            others = {d: frozenset.intersection(*(sats[c] for c in combo if c is not d)) for d in combo}
            if any(others[d] == answer for d in combo):
                continue
            # 'more than 340 employees' and 'more than 120' are one question when they rule out the same entities
            key = frozenset((c.relation, c.op, c.value if c.op == "=" else "", sats[c] & others[c]) for c in combo)
            if key not in seen:
                seen.add(key)
                yield combo


def multi_condition_qa(graph: Graph, conditions: tuple[Condition, ...]) -> QA:
    """The question, and a trace that lists every entity meeting the most selective condition (one fact each),
    then checks the others condition by condition, ruling entities out with the fact that fails them."""
    subjects = {words(c.relation, graph).subject for c in conditions}
    noun = subjects.pop() if len(subjects) == 1 else "entity"
    phrases = [c.phrase(graph) for c in conditions]
    order = sorted(conditions, key=lambda c: len(satisfying(graph, c)))
    steps: list[str] = []
    used: list[Triple] = []
    numbered = itertools.count(1)

    def step(text: str, t: Triple | None = None) -> None:
        steps.append(f"Step {next(numbered)}: {text}")
        if t is not None:
            used.append(t)

    def because(e: str, c: Condition, tail: str) -> str:
        said = fact(Triple(e, c.relation, tail), graph)
        return said if c.op == "=" else f"{said} So {e} {c.phrase(graph)}."

    first, remaining = order[0], sorted(satisfying(graph, order[0]))
    for e in remaining:
        tail = next(t for t in graph.tails(e, first.relation) if first.holds(t))
        step(because(e, first, tail), Triple(e, first.relation, tail))
    steps.append(f"No other {noun} {first.phrase(graph)}.")
    for c in order[1:]:
        kept = []
        for e in remaining:
            tails = graph.tails(e, c.relation)
            good = next((t for t in tails if c.holds(t)), None)
            if good is not None:
                step(because(e, c, good), Triple(e, c.relation, good))
                kept.append(e)
            elif not tails:
                step(f"No {c.relation.replace('_', ' ')} is recorded for {e}, so {e} is ruled out.")
            else:
                for t in tails:
                    step(f"{fact(Triple(e, c.relation, t), graph)} That rules {e} out.", Triple(e, c.relation, t))
        remaining = kept
    answer = ", ".join(remaining)
    step(f"The answer is {answer}.")
    return QA(
        kind="multi_condition",
        question=f"Which {noun} {_joined(phrases)}? List every {noun} that does, in alphabetical order, separated by "
        "commas.",
        steps=tuple(steps),
        content=f"The answer is \\boxed{{{answer}}}.",
        answer=answer,
        answers=tuple(remaining),
        triples=tuple(used),
        hops=1,
        conditions=conditions,
    )


# ---- the whole set ----


@dataclass(frozen=True)
class SynthOptions:
    max_hops: int = 3
    max_conditions: int = 3
    max_answers: int = 3
    max_per_kind: int | None = None
    seed: int = 0

    def check(self) -> None:
        if self.max_hops not in (2, 3):
            raise ConfigError(f"--max-hops {self.max_hops}: multi-hop questions walk 2 or 3 relations")
        if self.max_conditions not in (2, 3):
            raise ConfigError(f"--max-conditions {self.max_conditions}: questions combine 2 or 3 conditions")
        if self.max_answers < 1:
            raise ConfigError(f"--max-answers {self.max_answers}: must be at least 1")
        if self.max_per_kind is not None and self.max_per_kind < 1:
            raise ConfigError(f"--max-per-kind {self.max_per_kind}: must be at least 1")


def synthesize(graph: Graph, options: SynthOptions) -> list[QA]:
    """Every question of both kinds (or a seeded sample of max_per_kind each), in a seeded order."""
    options.check()
    rng = random.Random(options.seed)
    hop = [multi_hop_qa(graph, *p) for p in hop_paths(graph, options.max_hops)]
    cond = [
        multi_condition_qa(graph, c)
        for c in multi_condition_sets(graph, options.max_conditions, options.max_answers)
        if not any("," in a for a in frozenset.intersection(*(satisfying(graph, x) for x in c)))
    ]  # a name holding a comma would make a listed answer ambiguous
    out = []
    for qas in (hop, cond):
        rng.shuffle(qas)
        out += qas[: options.max_per_kind] if options.max_per_kind else qas
    rng.shuffle(out)
    return out


@dataclass
class Split:
    train: list[QA] = field(default_factory=list)
    test: list[QA] = field(default_factory=list)
    dropped: list[QA] = field(default_factory=list)  # their key entities sit on both sides


def split_by_entity(qas: list[QA], test_fraction: float, key: SplitKey = "answer", seed: int = 0) -> Split:
    """Train/test by held-out entities.

    Questions with the same set of used triples form one group; a group's key entities are the union of its
    questions' (`QA.key_entities`). Test grows from a seeded start, always taking the group that adds the fewest new
    key entities to the held-out set (ties: seeded order), until it holds test_fraction of the questions; then every
    group whose key entities are all held out joins it too. Groups with no held-out key entity are train; the rest
    (key entities on both sides) are dropped. Guaranteed: (1) no test question's set of used triples equals a
    training question's; (2) no key entity of a test question is a key entity of a training question — with key
    "answer" no test answer is ever a training answer, with key "path" no entity on a test question's answer path is
    on any training question's answer path."""
    if not 0 <= test_fraction < 1:
        raise ConfigError(f"--test-fraction {test_fraction}: must be at least 0 and below 1")
    if key not in SPLIT_KEYS:
        raise ConfigError(f"--split-key {key}: choose from {', '.join(SPLIT_KEYS)}")
    groups: dict[frozenset[Triple], list[QA]] = {}
    for qa in qas:
        groups.setdefault(frozenset(qa.triples), []).append(qa)
    order = sorted(groups.values(), key=lambda g: g[0].id)
    random.Random(seed).shuffle(order)
    keys = [frozenset().union(*(qa.key_entities(key) for qa in g)) for g in order]
    target = test_fraction * len(qas)
    held: set[str] = set()
    left = list(range(len(order)))
    out = Split()
    while left and test_fraction > 0:
        best = min(left, key=lambda i: len(keys[i] - held))  # min keeps the first of equals: seeded order
        if len(out.test) >= target and keys[best] - held:
            break
        out.test += order[best]
        held |= keys[best]
        left.remove(best)
    for i in left:
        (out.dropped if keys[i] & held else out.train).extend(order[i])
    return out


def to_record(qa: QA) -> dict[str, Any]:
    """The canonical SFT record: user question, assistant reasoning + boxed answer; meta for eval and inspection."""
    meta: dict[str, Any] = {"answer": qa.answer, "id": qa.id, "kind": qa.kind, "hops": qa.hops}
    if qa.kind == "multi_hop":
        meta["path"] = list(qa.path)
        meta["relations"] = [{"relation": h.relation, "inverse": h.inverse} for h in qa.relations]
    else:
        meta["conditions"] = [c.to_json() for c in qa.conditions]
    meta["answers"] = list(qa.answers)
    meta["triples"] = [list(t) for t in qa.triples]
    if qa.rewritten_by:
        meta["rewritten_by"] = qa.rewritten_by
    return {
        "messages": [
            {"role": "user", "content": qa.question, "reasoning": None},
            {"role": "assistant", "content": qa.content, "reasoning": "\n".join(qa.steps)},
        ],
        "meta": meta,
    }
