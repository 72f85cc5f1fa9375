"""`thinktune data synth`: answers re-derived by walking the triples independently, the split guarantee, seeded
determinism, rejects for bad rows, records that read back as SFT data and eval tasks, teacher rewording through a
real OpenAI-compatible endpoint on localhost, and the CLI end to end."""

from __future__ import annotations

import json
import re
from collections import Counter
from itertools import combinations

import pytest
from typer.testing import CliRunner

from tests.fake_openai import ChatEndpoint, serving
from thinktune.cli import app
from thinktune.data.graph import Triple, read_graph
from thinktune.data.reading import read_records, resolve_path
from thinktune.data.synth import SynthOptions, split_by_entity, synthesize, to_record
from thinktune.errors import ConfigError, DataError
from thinktune.eval.reasoning import answers_match, extract_answer
from thinktune.eval.tasks import load_tasks
from thinktune.train.verbalise import apply_rewrite

runner = CliRunner()


def cli(*args):
    return runner.invoke(app, ["data", *map(str, args)], env={"COLUMNS": "200", "NO_COLOR": "1"})


def one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for f in fragments:
        assert f in lines[0], lines[0]


def bundled_triples() -> set[tuple[str, str, str]]:
    """The bundled graph read with plain json, not thinktune's reader."""
    rows = [json.loads(x) for x in resolve_path("bundled:finance_graph").read_text().splitlines()]
    return {(str(r["head"]), r["relation"], str(r["tail"])) for r in rows}


@pytest.fixture(scope="module")
def bundled_records():
    graph = read_graph(["bundled:finance_graph"]).graph
    return [to_record(qa) for qa in synthesize(graph, SynthOptions())]


# ---- an independent check: walk the triples ----


def walk(triples, start, relations):
    here = start
    for hop in relations:
        if hop["inverse"]:
            nxt = [h for h, r, t in triples if r == hop["relation"] and t == here]
        else:
            nxt = [t for h, r, t in triples if h == here and r == hop["relation"]]
        assert len(nxt) == 1, f"{here} --{hop}--> {nxt}: not unique"
        here = nxt[0]
    return here


def meets(triples, entity, c):
    for h, r, t in triples:
        if h == entity and r == c["relation"]:
            if c["op"] == "=" and t == c["value"]:
                return True
            if c["op"] in "<>" and (float(t) < float(c["value"]) if c["op"] == "<" else float(t) > float(c["value"])):
                return True
    return False


def entities_meeting(triples, conditions):
    heads = {h for h, _, _ in triples}
    return sorted(e for e in heads if all(meets(triples, e, c) for c in conditions))


def check_record(rec, triples):
    meta, (user, reply) = rec["meta"], rec["messages"]
    assert {tuple(t) for t in meta["triples"]} <= triples  # every fact the trace states is in the graph
    if meta["kind"] == "multi_hop":
        assert 2 <= meta["hops"] == len(meta["relations"]) <= 3
        assert walk(triples, meta["path"][0], meta["relations"]) == meta["answer"]
        assert len(set(meta["path"])) == len(meta["path"]) and meta["path"][0] in user["content"]
    else:
        conds = meta["conditions"]
        assert 2 <= len(conds) <= 3 and len({c["relation"] for c in conds}) == len(conds)
        found = entities_meeting(triples, conds)
        assert ", ".join(found) == meta["answer"] and found == meta["answers"]
        for c in conds:  # every condition is needed
            assert entities_meeting(triples, [d for d in conds if d is not c]) != found
    assert answers_match(extract_answer(reply["content"]), meta["answer"])
    steps = reply["reasoning"].splitlines()
    assert steps[-1].endswith(f"The answer is {meta['answer']}.")
    numbered = [s for s in steps if s.startswith("Step ")]
    assert [int(s.split()[1].rstrip(":")) for s in numbered] == list(range(1, len(numbered) + 1))
    # one fact per step: the stated triples and the steps that cite one line up, in order
    citing = [s for s in numbered[:-1] if "No " not in s.split(":", 1)[1][:4]]
    assert len(citing) == len(meta["triples"])
    for step, (h, _, t) in zip(citing, meta["triples"], strict=True):
        assert h in step and t in step


def test_bundled_graph_answers_are_verified(bundled_records):
    triples = bundled_triples()
    assert 40 <= len(triples) <= 80
    kinds = Counter(
        (r["meta"]["kind"], r["meta"]["hops"], len(r["meta"].get("conditions", []))) for r in bundled_records
    )
    assert kinds[("multi_hop", 2, 0)] and kinds[("multi_hop", 3, 0)]
    assert kinds[("multi_condition", 1, 2)] and kinds[("multi_condition", 1, 3)]
    for rec in bundled_records:
        check_record(rec, triples)
    questions = [r["messages"][0]["content"] for r in bundled_records]
    assert len(set(questions)) == len(questions)
    ceo = next(
        r for r in bundled_records if r["messages"][0]["content"].startswith("Who is the CEO of the company that acq")
    )
    assert walk(triples, ceo["meta"]["path"][0], ceo["meta"]["relations"]) == ceo["meta"]["answer"]


def test_non_unique_hops_are_never_asked(bundled_records):
    # Glenrock Holdings acquired two companies: "the company acquired by Glenrock Holdings" has no single answer
    assert not any("acquired by Glenrock Holdings" in r["messages"][0]["content"] for r in bundled_records)
    assert any("the company that acquired Dunmore Payments" in r["messages"][0]["content"] for r in bundled_records)


# ---- split ----


def key_entities(meta, key):
    if key == "answer":
        return set(meta["answers"])
    if meta["kind"] == "multi_hop":
        return set(meta["path"])
    return set(meta["answers"]) | {c["value"] for c in meta["conditions"]}


@pytest.mark.parametrize(
    "key,fraction,seed", [("answer", 0.2, 0), ("answer", 0.3, 7), ("path", 0.2, 0), ("path", 0.1, 3)]
)
def test_split_guarantee(key, fraction, seed):
    qas = synthesize(read_graph(["bundled:finance_graph"]).graph, SynthOptions(seed=seed))
    split = split_by_entity(qas, fraction, key, seed)
    assert len(split.train) + len(split.test) + len(split.dropped) == len(qas)
    assert split.train and len(split.test) >= fraction * len(qas)
    train = [to_record(q)["meta"] for q in split.train]
    test = [to_record(q)["meta"] for q in split.test]
    train_paths = {frozenset(map(tuple, m["triples"])) for m in train}
    assert not any(frozenset(map(tuple, m["triples"])) in train_paths for m in test)
    train_keys = set().union(*(key_entities(m, key) for m in train))
    test_keys = set().union(*(key_entities(m, key) for m in test))
    assert not train_keys & test_keys
    if key == "answer":
        assert not {m["answer"] for m in train} & {m["answer"] for m in test}


def test_split_keeps_questions_with_the_same_triples_together():
    qas = synthesize(read_graph(["bundled:finance_graph"]).graph, SynthOptions())
    twins = Counter(frozenset(q.triples) for q in qas)
    assert max(twins.values()) > 1  # a path asked from both ends uses the same triples
    split = split_by_entity(qas, 0.3, "answer")
    side = {}
    for name in ("train", "test", "dropped"):
        for q in getattr(split, name):
            assert side.setdefault(frozenset(q.triples), name) == name


def test_split_refusals():
    with pytest.raises(ConfigError, match="--test-fraction 1"):
        split_by_entity([], 1, "answer")
    with pytest.raises(ConfigError, match="--split-key tail"):
        split_by_entity([], 0.2, "tail")
    with pytest.raises(ConfigError, match="--max-hops 4"):
        SynthOptions(max_hops=4).check()


def test_seeded_determinism():
    graph = read_graph(["bundled:finance_graph"]).graph

    def run(seed):
        split = split_by_entity(synthesize(graph, SynthOptions(seed=seed, max_per_kind=50)), 0.2, "answer", seed)
        return [to_record(q) for q in split.train], [to_record(q) for q in split.test]

    assert run(3) == run(3)
    assert run(3) != run(4)
    assert len(run(3)[0]) + len(run(3)[1]) <= 100


# ---- reading graphs: triples, tables, rejects ----


def test_triples_csv_and_jsonl_rejects(tmp_path):
    csv = tmp_path / "g.csv"
    csv.write_text(
        "head,relation,tail\n"
        "A Corp,ceo,Ann\n"
        "A Corp,sector,\n"  # line 3: empty tail
        "B Corp,ceo,Bob,extra\n"  # line 4: wrong width
        "A Corp,ceo,Ann\n"  # line 5: repeated triple
        "B Corp,ceo,Bob\n"
    )
    jsonl = tmp_path / "g.jsonl"
    jsonl.write_text(
        '{"head": "B Corp", "relation": "founded", "tail": 1990}\n'
        "{bad json\n"
        '{"head": "B Corp", "relation": "tags", "tail": ["x"]}\n'
        '{"head": "C Corp", "relation": "ceo"}\n'
    )
    loaded = read_graph([str(csv), str(jsonl)])
    assert Triple("B Corp", "founded", "1990") in loaded.graph.triples and len(loaded.graph.triples) == 3
    got = [(r.file, r.line, r.reason) for r in loaded.rejects]
    assert got == [
        (str(csv), 3, "empty or missing field 'tail'"),
        (str(csv), 4, "CSV row has 4 fields, the header has 3"),
        (str(csv), 5, f"repeats the triple ('A Corp', 'ceo', 'Ann') of {csv}:2"),
        (str(jsonl), 2, got[3][2]),
        (str(jsonl), 3, "field 'tail' must be text or a number, got list"),
        (str(jsonl), 4, "empty or missing field 'tail'"),
    ]
    assert got[3][2].startswith("invalid JSON")


def test_table_rows_become_triples(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text(
        "company,sector,founded,city\n"
        "A Corp,Banking,1990,Leeds\n"
        ",Banking,1991,Leeds\n"  # line 3: no key
        "A Corp,Fintech,1992,Graz\n"  # line 4: A Corp again
        "B Corp,,,\n"  # line 5: no facts
        "C Corp,Banking,2001,\n"  # an empty cell is a fact not stated
    )
    loaded = read_graph([str(table)])
    assert loaded.graph.triples == [
        Triple("A Corp", "sector", "Banking"), Triple("A Corp", "founded", "1990"), Triple("A Corp", "city", "Leeds"),
        Triple("C Corp", "sector", "Banking"), Triple("C Corp", "founded", "2001"),
    ]  # fmt: skip
    assert [(r.line, r.reason) for r in loaded.rejects] == [
        (3, "empty or missing key field 'company'"),
        (4, "entity 'A Corp' already described at line 2"),
        (5, "no facts: every cell besides the key is empty"),
    ]
    assert loaded.graph.subjects["city"] == "company"
    with pytest.raises(DataError, match="--key ticker: no such column"):
        read_graph([str(table)], key="ticker")


def test_nothing_usable_is_one_error(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("head,relation,tail\n,ceo,Ann\n")
    with pytest.raises(DataError, match=r"no usable triples \(1 rows rejected; first: .*bad.csv:2: empty"):
        read_graph([str(bad)])
    one_line_error(cli("synth", bad, "-o", tmp_path / "out"), "no usable triples")
    one_line_error(cli("synth", tmp_path / "missing.csv", "-o", tmp_path / "out"), "data file not found")


# ---- records, eval tasks, CLI ----


def test_records_read_back_and_become_eval_tasks(bundled_records, tmp_path):
    from thinktune.data.reading import write_records

    path = tmp_path / "qa.jsonl"
    write_records(bundled_records, path)
    loaded = read_records(str(path))
    assert not loaded.rejects and len(loaded.records) == len(bundled_records)
    back = loaded.records[0]
    assert back["messages"][1]["reasoning"] == bundled_records[0]["messages"][1]["reasoning"]
    assert back["meta"]["triples"] == bundled_records[0]["meta"]["triples"]
    tasks = load_tasks(str(path))
    assert not tasks.rejects
    for task, rec in zip(tasks.records, bundled_records, strict=True):
        assert task["answer"] == rec["meta"]["answer"]
        assert task["prompt"] == [{"role": "user", "content": rec["messages"][0]["content"], "reasoning": None}]


def test_help_has_an_example():
    r = cli("synth", "--help")
    assert r.exit_code == 0 and "Example" in r.output and "thinktune data synth bundled:finance_graph" in r.output


def test_cli_bundled_end_to_end(tmp_path):
    out = tmp_path / "synth"
    r = cli("synth", "bundled:finance_graph", "-o", out, "--seed", 1)
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["triples"] == 80 and summary["rejected_rows"] == 0
    total = sum(summary["questions"].values())
    assert summary["train"] + summary["test"] + summary["dropped_by_split"] == total
    assert f"{total} questions from 80 triples" in r.output and (out / "rejects.jsonl").read_text() == ""
    triples = bundled_triples()
    tasks = load_tasks(str(out / "test.jsonl"))
    assert len(tasks.records) == summary["test"] and not tasks.rejects
    train_answers = {json.loads(x)["answer"] for x in (out / "train.jsonl").read_text().splitlines()}
    for task in tasks.records:
        check_record({"messages": task["messages"], "meta": task["meta"]}, triples)
        assert task["answer"] not in train_answers
    again = tmp_path / "again"
    assert cli("synth", "bundled:finance_graph", "-o", again, "--seed", 1).exit_code == 0
    assert (again / "test.jsonl").read_bytes() == (out / "test.jsonl").read_bytes()


def test_cli_table_with_rejects(tmp_path):
    table = tmp_path / "firms.csv"
    rows = [
        ("ticker", "name", "sector", "city", "staff"),
        ("AAA", "Aaa Bank", "Banking", "Leeds", "100"),
        ("BBB", "Bbb Bank", "Banking", "Graz", "200"),
        ("CCC", "Ccc Pay", "Payments", "Leeds", "300"),
        ("DDD", "Ddd Pay", "Payments", "Graz", "400"),
        ("EEE", "Eee Bank", "Banking", "Leeds", "500"),
        ("EEE", "dup", "Banking", "Leeds", "600"),
    ]
    table.write_text("\n".join(",".join(r) for r in rows) + "\n")
    out = tmp_path / "out"
    r = cli("synth", table, "--key", "ticker", "-o", out, "--test-fraction", 0)
    assert r.exit_code == 0, r.output
    assert not (out / "test.jsonl").exists()
    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    assert rejects == [{"file": str(table), "line": 7, "reason": "entity 'EEE' already described at line 6"}]
    recs = read_records(str(out / "train.jsonl")).records
    questions = {r["messages"][0]["content"]: r["meta"]["answer"] for r in recs}
    q = "Which ticker has city Leeds and is in the Banking sector? List every ticker that does, in alphabetical " \
        "order, separated by commas."  # fmt: skip
    assert questions[q] == "AAA, EEE"
    assert questions["What is the name of the ticker whose staff is 300?"] == "Ccc Pay"
    one_line_error(cli("synth", table, "-o", out, "--max-hops", 5), "--max-hops 5")
    one_line_error(cli("synth", table, "-o", out, "--split-key", "tail"), "--split-key tail")


# ---- teacher rewording ----


def test_apply_rewrite_keeps_the_answer():
    graph = read_graph(["bundled:finance_graph"]).graph
    qa = next(q for q in synthesize(graph, SynthOptions()) if q.kind == "multi_hop")
    good, why = apply_rewrite(qa, f"Question: Tell me {qa.path[0]}?\nSolution: so \\boxed{{{qa.answer}}}", "t")
    assert why is None and good.question == f"Tell me {qa.path[0]}?" and good.rewritten_by == "t"
    assert to_record(good)["meta"]["answer"] == qa.answer and good.id == qa.id
    assert apply_rewrite(qa, "Question: q\nSolution: \\boxed{Nobody}", "t") == (qa, "changed_answer")
    assert apply_rewrite(qa, "Sure! Here it is.", "t") == (qa, "unparsed")
    leak = f"Question: Is it {qa.answer}?\nSolution: \\boxed{{{qa.answer}}}"
    assert apply_rewrite(qa, leak, "t") == (qa, "answer_in_question")


class RewordingTeacher(ChatEndpoint):
    """An OpenAI-compatible endpoint that rewords: every third question it breaks the answer, every third it does
    not follow the reply form, the rest it rewords correctly."""

    model_id = "rewriter"
    decisions: dict[str, str] = {}

    def answer(self, req):
        prompt = req["messages"][-1]["content"]
        question = re.search(r"^Question: (.+)$", prompt, re.M)[1]
        answer = re.findall(r"The answer is (.+)\.$", prompt, re.M)[-1]
        n = len(RewordingTeacher.decisions) % 3
        RewordingTeacher.decisions[question] = ["changed_answer", "unparsed", "rewritten"][n]
        text = [
            f"Question: Kindly say: {question}\nSolution: Thinking it over, \\boxed{{Nobody}}",
            "I would rather not.",
            f"Question: Kindly say: {question}\nSolution: Going fact by fact, it is \\boxed{{{answer}}}.",
        ][n]
        return {"role": "assistant", "content": text}


def test_cli_teacher_rewording(tmp_path):
    RewordingTeacher.decisions = {}
    out = tmp_path / "out"
    with serving(RewordingTeacher) as url:
        r = cli("synth", "bundled:finance_graph", "-o", out, "--max-per-kind", 6, "--teacher", url)
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    asked = Counter(RewordingTeacher.decisions.values())
    assert summary["teacher"] == dict(asked) and asked["rewritten"] and asked["changed_answer"]
    triples = bundled_triples()
    recs = [json.loads(x) for part in ("train", "test") for x in (out / f"{part}.jsonl").read_text().splitlines()]
    assert len(recs) == summary["train"] + summary["test"] == len(RewordingTeacher.decisions)
    for rec in recs:
        meta, question = rec, rec["messages"][0]["content"]
        if meta.get("rewritten_by"):
            assert meta["rewritten_by"] == url and question.startswith("Kindly say: ")
            assert RewordingTeacher.decisions[question.removeprefix("Kindly say: ")] == "rewritten"
        else:
            assert RewordingTeacher.decisions[question] != "rewritten"
        assert answers_match(extract_answer(rec["messages"][1]["content"]), rec["answer"])
        assert {tuple(t) for t in rec["triples"]} <= triples
    assert f"teacher: {asked['rewritten']} reworded" in r.output


def test_combinations_helper_sanity():
    # the independent checker itself: a condition set where one condition is redundant is caught
    triples = {("A", "s", "x"), ("B", "s", "x"), ("A", "c", "L"), ("B", "c", "M")}
    conds = [{"relation": "s", "op": "=", "value": "x"}, {"relation": "c", "op": "=", "value": "L"}]
    assert entities_meeting(triples, conds) == ["A"]
    assert [entities_meeting(triples, list(c)) for c in combinations(conds, 1)] == [["A", "B"], ["A"]]
