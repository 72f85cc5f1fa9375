"""`custom_dataset` of the bundled lm-eval task `thinktune_arithmetic`: thinktune's bundled arithmetic test split
(200 word problems with numeric answers), read from the package, so the task needs no data path and no network."""

from __future__ import annotations

from typing import Any


def load(**_: Any):
    """{"test": Dataset} of {"question": the user turn, "answer": the reference number}."""
    from datasets import Dataset, DatasetDict

    from thinktune.eval.tasks import load_tasks

    records = load_tasks("bundled:arithmetic/test").records
    rows = [{"question": r["prompt"][-1]["content"], "answer": r["answer"]} for r in records]
    return DatasetDict({"test": Dataset.from_list(rows)})
