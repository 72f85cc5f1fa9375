"""Adapter export: the run's PEFT adapter as a self-describing folder to share (or push to the Hub).

    thinktune export --run-dir runs/quickstart --format adapter --push-to-hub me/quickstart-lora

Out: adapter_config.json (with `base_model_name_or_path` naming the base: its Hub id when known, see
model_card.base_model_reference), the adapter weights, the tokenizer and the model card. Verified: the copied
folder is loaded as a second adapter onto the same base and its logits compared with the original adapter's.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from thinktune.errors import UserError
from thinktune.export.model_card import record_base_model
from thinktune.export.parity import directory_bytes, max_abs_diff, top1_agreement, torch_logits
from thinktune.export.source import ExportOptions, ExportSource

# What an adapter directory holds that belongs in the export (not the card PEFT writes, nor training leftovers).
SKIPPED = {"README.md"}


def check(model_type: str, options: ExportOptions) -> None:
    """Nothing to refuse up front: any PEFT adapter can be shared as it is."""


def export_adapter(source: ExportSource, out: Path, options: ExportOptions) -> dict[str, Any]:
    if Path(source.adapter).resolve() == Path(out).resolve():
        raise UserError(f"{out}: the adapter export must go to another directory than the adapter itself")
    for path in sorted(Path(source.adapter).iterdir()):
        if path.is_file() and path.name not in SKIPPED:
            shutil.copy2(path, out / path.name)
    base = record_base_model(out, source.name_or_path)

    ids = source.chat_ids(options.prompts)
    reference = [torch_logits(source.model, x) for x in ids]
    source.model.load_adapter(str(out), adapter_name="exported")
    source.model.set_adapter("exported")
    logits = [torch_logits(source.model, x) for x in ids]
    source.model.set_adapter("default")
    source.model.delete_adapter("exported")
    weights = sorted(out.glob("adapter_model.*"))
    return {
        "artefact": str(out),
        "base_model_name_or_path": base,
        "compared_with": "the original adapter on the same base",
        "max_abs_logit_diff": max_abs_diff(reference, logits),
        "top1_agreement": top1_agreement(reference, logits),
        "bytes": directory_bytes(*weights),
    }
