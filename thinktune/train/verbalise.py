"""Teacher rewording of synthesized QA (`thinktune data synth ... --teacher URL|MODEL`), the answer kept fixed.

    thinktune data synth bundled:finance_graph -o synth/ --teacher http://localhost:8000/v1

The teacher (`distill traces`' plumbing: a local model or an OpenAI-compatible endpoint) gets the template question
and step-by-step solution and returns them reworded. A rewrite is used only when its solution boxes the same answer
(`answers_match`) and its question does not give away an answer entity the template question did not name;
otherwise the template wording stays and the reason is counted.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter

from thinktune.data.synth import QA
from thinktune.eval.reasoning import answers_match, boxed
from thinktune.train.distill import Teacher

PROMPT = """Reword this question and its worked solution in natural, fluent English. Keep every fact, the order of \
the steps and the final answer exactly; add no facts; do not give the answer away in the question.

Question: {question}
Solution:
{steps}

Reply in exactly this form:
Question: <the reworded question>
Solution: <the reworded solution, ending with the final answer in \\boxed{{}}>"""
REPLY = re.compile(r"question:\s*(?P<question>.+?)\s*solution:\s*(?P<solution>.+)", re.IGNORECASE | re.DOTALL)


def rewrite_prompt(qa: QA) -> str:
    return PROMPT.format(question=qa.question, steps="\n".join(qa.steps))


def apply_rewrite(qa: QA, reply: str, teacher: str) -> tuple[QA, str | None]:
    """(the reworded QA, None), or (the QA unchanged, why the rewrite was not used)."""
    m = REPLY.search(reply or "")
    if m is None:
        return qa, "unparsed"
    question, solution = m["question"].strip(), m["solution"].strip()
    if not answers_match(boxed(solution), qa.answer):
        return qa, "changed_answer"
    leaked = [a for a in qa.answers if a.lower() in question.lower() and a.lower() not in qa.question.lower()]
    if leaked:
        return qa, "answer_in_question"
    return dataclasses.replace(qa, question=question, steps=(solution,), rewritten_by=teacher), None


def verbalise(qas: list[QA], teacher: Teacher, name: str, batch: int = 8) -> tuple[list[QA], Counter[str]]:
    """Every QA reworded where the teacher's rewrite passes the checks; counts `rewritten` and each reason not."""
    out: list[QA] = []
    counts: Counter[str] = Counter()
    for start in range(0, len(qas), batch):
        chunk = qas[start : start + batch]
        answers = teacher([[{"role": "user", "content": rewrite_prompt(qa)}] for qa in chunk], 1)
        for qa, outs in zip(chunk, answers, strict=True):
            if not outs or not outs[0].finished:
                out.append(qa)
                counts["unfinished"] += 1
                continue
            new, why = apply_rewrite(qa, outs[0].content, name)
            out.append(new)
            counts[why or "rewritten"] += 1
    return out, counts
