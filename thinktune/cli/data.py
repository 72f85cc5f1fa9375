"""`thinktune data ...`: check, describe, show, clean and split datasets; synthesize reasoning QA from a graph.

thinktune data validate my_train.jsonl
thinktune data validate --dataset-dir data glaive_toolcall_en_demo dpo_en_demo --kind preference
thinktune data stats my_train.jsonl --model smollm2-135m-instruct --max-length 2048
thinktune data inspect my_train.jsonl -n 3 --no-thinking
thinktune data inspect bundled:arithmetic/train -n 2 --epoch 1 --set data.augment.template_fraction=1
thinktune data clean raw.jsonl -o clean.jsonl --pii
thinktune data split clean.jsonl -o splits/ --ratio train=0.9,test=0.1
thinktune data synth bundled:finance_graph -o synth/ --test-fraction 0.2
"""

from __future__ import annotations

import json
from collections import Counter
from itertools import islice
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from thinktune.cli.app import ConfigOpt, SetOpt, build_config, console, data_app, user_errors
from thinktune.errors import DataError, UserError

Files = Annotated[
    list[str],
    typer.Argument(
        help="JSONL/JSON/CSV/TSV/Parquet files, `datasets` dirs, bundled:NAME, or dataset names of --dataset-dir."
    ),
]
FormatOpt = Annotated[str, typer.Option("--format", help="Record format (see docs/data.md); auto detects it.")]
KindOpt = Annotated[str, typer.Option("--kind", help="sft, preference, task, or kto (LLaMA-Factory KTO data).")]
DatasetDirOpt = Annotated[
    str | None,
    typer.Option("--dataset-dir", help="LLaMA-Factory data folder: FILES may name datasets of its dataset_info.json."),
]
ColumnsOpt = Annotated[
    str | None,
    typer.Option("--columns", help='Column mapping: prompt=q,response=a  or JSON {"prompt": "q", ...}.'),
]
SplitOpt = Annotated[str | None, typer.Option("--split", help="Split of a `datasets` DatasetDict directory.")]
ModelOpt = Annotated[
    str, typer.Option("--model", "-m", help="Tokenizer: bundled model name, model directory or .gguf.")
]
MaxLenOpt = Annotated[int, typer.Option("--max-length", help="Token limit training would use (data.max_length).")]
SystemOpt = Annotated[str | None, typer.Option("--system-prompt", help="System prompt added where none is set.")]
EpochOpt = Annotated[
    int | None,
    typer.Option(
        "--epoch",
        help="Records as epoch N (from 0) of a run trains them with data.augment, taken from --config/--set.",
    ),
]
DEFAULT_MODEL = "smollm2-135m-instruct"


def augmentation(config: Path | None, sets: list[str] | None, epoch: int | None, kind: str):
    """The run's DataConfig whose data.augment `--epoch` shows, or None without --epoch."""
    if epoch is None:
        if config or sets:
            raise UserError("--config/--set give the data.augment settings that --epoch N shows: add --epoch N")
        return None
    if epoch < 0 or kind != "sft":
        raise UserError(f"--epoch {epoch}: epochs count from 0, and augmentation applies to sft records only")
    data = build_config(config, sets).data
    if data.augment is None or not data.augment.active():
        raise UserError(
            f"--epoch {epoch}: no augmentation configured; set data.augment in --config or --set "
            "(e.g. --set data.augment.template_fraction=0.5)"
        )
    return data


def epoch_records(records: list[dict[str, Any]], data: Any, epoch: int) -> list[dict[str, Any]]:
    """The records as the run's epoch trains them (the training draws; back-translations from the shared cache,
    the teacher asked for the missing ones)."""
    from thinktune.data.augment import augment_epoch, build_augmenters, drawn_prompts

    aug, translations = data.augment, None
    if aug.back_translation is not None:
        from thinktune.train.translator import fill_translations

        bt = aug.back_translation
        prompts = sorted(drawn_prompts(records, "back_translation", bt.fraction, data.seed, epoch))
        translations = fill_translations(bt, data.cache_dir, prompts, console)
    return augment_epoch(records, build_augmenters(aug, translations), data.seed, epoch)


def augmented_counts(records: list[dict[str, Any]]) -> Counter[str]:
    return Counter(
        label.split(":")[0] for r in records if (how := r["meta"].get("augmented")) for label in how.split("+")
    )


def parse_columns(text: str | None):
    """`prompt=q,response=a` or a JSON object (or a JSON file) → ColumnMap; None when not given."""
    from pydantic import ValidationError

    from thinktune.data.spec import ColumnMap

    if not text:
        return None
    try:
        if text.lstrip().startswith("{"):
            raw = json.loads(text)
        elif Path(text).is_file():
            raw = json.loads(Path(text).read_text())
        else:
            raw = dict(p.split("=", 1) for p in text.split(",") if p.strip())
        return ColumnMap.model_validate(raw)
    except (ValueError, json.JSONDecodeError, ValidationError) as e:
        detail = e.errors()[0]["msg"] if isinstance(e, ValidationError) else str(e)
        raise UserError(f"--columns {text!r}: {detail}") from None


def _sources(
    files: list[str], fmt: str, kind: str, columns: str | None, split: str | None, dataset_dir: str | None = None
) -> list[Any]:
    from thinktune.data.dataset_info import reference
    from thinktune.data.reading import KTO
    from thinktune.data.records import check_format
    from thinktune.data.spec import DatasetSpec

    check_format(fmt, "sft" if kind == KTO else kind)
    cols = parse_columns(columns)
    refs = [reference(f, dataset_dir) for f in files] if dataset_dir else files
    return [DatasetSpec(path=r, format=fmt, columns=cols, split=split) for r in refs]


def _items(sources: list[Any], kind: str):
    from thinktune.data.reading import iter_records

    for spec in sources:
        yield from iter_records(spec, kind=kind)


def load_tokenizer_only(model: str, with_vision: bool = False):
    """The tokenizer of a model, without loading (or converting) weights; `with_vision`: (tokenizer, vision), the
    model's way of taking images (models/vision.py) or None."""
    from thinktune.models.loading import (
        BUNDLED,
        ModelSource,
        bundled_gguf,
        converted_dir,
        load_tokenizer,
        resolve_model,
    )
    from thinktune.models.vision import vision_without_weights

    if model in BUNDLED and not (converted_dir(model) / "config.json").is_file():
        gguf = bundled_gguf(model)
        if gguf is not None:  # read the tokenizer straight from the GGUF instead of converting the model first
            tokenizer = load_tokenizer(ModelSource(gguf.parent, gguf.name))
            return (tokenizer, None) if with_vision else tokenizer
    source = resolve_model(model)
    tokenizer = load_tokenizer(source)
    return (tokenizer, vision_without_weights(source.path)) if with_vision else tokenizer


@data_app.command("validate")
@user_errors
def data_validate(
    files: Files,
    format_: FormatOpt = "auto",
    kind: KindOpt = "sft",
    columns: ColumnsOpt = None,
    split: SplitOpt = None,
    dataset_dir: DatasetDirOpt = None,
) -> None:
    """Check that every record of each file is usable; list the bad ones with file, line and reason.

    Example: `thinktune data validate my_train.jsonl --format sharegpt`  (exit code 1 when any record is bad)
    """
    from thinktune.data.reading import Reject
    from thinktune.data.records import conversation

    bad = 0
    for name, spec in zip(files, _sources(files, format_, kind, columns, split, dataset_dir), strict=True):
        usable, rejects, with_reasoning = 0, [], 0
        for item in _items([spec], kind):
            if isinstance(item, Reject):
                rejects.append(item)
            else:
                usable += 1
                with_reasoning += any(m["reasoning"] for m in conversation(item))
        bad += len(rejects)
        # markup=False: references hold brackets (`hf:org/name[train]`, `file[:90%]`) rich would take for tags
        line = f"{name}: {usable} usable, {len(rejects)} rejected, {with_reasoning} with reasoning"
        console.print(line, markup=False)
        for r in rejects:
            console.print(f"  {r.file}:{r.line}: {r.reason}", highlight=False, markup=False)
    if bad:
        raise typer.Exit(1)


@data_app.command("stats")
@user_errors
def data_stats(
    files: Files,
    model: ModelOpt = DEFAULT_MODEL,
    max_length: MaxLenOpt = 1024,
    system_prompt: SystemOpt = None,
    png: Annotated[Path | None, typer.Option("--png", help="Histogram image (default data_stats.png).")] = None,
    no_png: Annotated[bool, typer.Option("--no-png", help="Do not write the histogram image.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the statistics as JSON.")] = False,
    format_: FormatOpt = "auto",
    kind: KindOpt = "sft",
    columns: ColumnsOpt = None,
    split: SplitOpt = None,
    dataset_dir: DatasetDirOpt = None,
    epoch: EpochOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Counts, token-length and thinking-length histograms, roles, duplicates, scripts, and how many records
    `--max-length` would reject; with `--epoch N`, of the records as epoch N trains them with data.augment.

    Example: `thinktune data stats my_train.jsonl --max-length 2048 --png lengths.png`
    Augmented: `thinktune data stats my_train.jsonl --epoch 1 --config run.yaml`
    """
    from thinktune.data.reading import Reject
    from thinktune.data.stats import compute_stats, histogram, summary, write_histogram_png

    augment = augmentation(config, set_, epoch, kind)
    sources = _sources(files, format_, kind, columns, split, dataset_dir)
    tokenizer = load_tokenizer_only(model)
    items, augmented = _items(sources, kind), None
    if augment is not None:
        items = list(items)
        varied = iter(epoch_records([x for x in items if not isinstance(x, Reject)], augment, epoch))
        items = [x if isinstance(x, Reject) else next(varied) for x in items]
        augmented = augmented_counts([x for x in items if not isinstance(x, Reject)])
        changed = sum(1 for x in items if not isinstance(x, Reject) and x["meta"].get("augmented"))
    stats = compute_stats(iter(items), tokenizer, max_length, system_prompt)
    image = None if no_png else write_histogram_png(stats, png or Path("data_stats.png"), ", ".join(files))
    extra = {} if augmented is None else {"epoch": epoch, "augmented": changed, "augmenters": dict(augmented)}
    if as_json:
        console.print_json(data={**stats.to_json(), **extra, "png": str(image) if image else None})
        return
    n = stats.records
    console.print(f"[bold]{n}[/] records, {stats.rejects} rejected while reading ({escape(', '.join(files))})")
    if augmented is not None:
        detail = ", ".join(f"{k} {v}" for k, v in sorted(augmented.items())) or "none"
        console.print(f"augmented  {changed} of {n} records in epoch {epoch} ({detail})", highlight=False)
    for reason, k in stats.reject_reasons.most_common(5):
        console.print(f"  {k} × {reason}", highlight=False)
    turns = ", ".join(f"{t} msgs: {k}" for t, k in sorted(stats.turns.items()))
    console.print(f"turns      {turns}")
    console.print(f"roles      {', '.join(f'{r} {k}' for r, k in stats.roles.most_common())}")
    console.print(f"reasoning  {stats.with_reasoning} of {n} records ({stats.with_reasoning / max(n, 1):.0%})")
    console.print(f"duplicates {stats.duplicates} exact ({stats.duplicate_rate:.1%})")
    console.print(f"scripts    {', '.join(f'{s} {k / max(n, 1):.0%}' for s, k in stats.scripts.most_common())}")
    for name, values in (("tokens", stats.token_lengths), ("thinking tokens", stats.think_lengths)):
        s = summary(values)
        if s["count"]:
            console.print(
                f"{name}: mean {s['mean']:.0f}, p50 {s['p50']}, p90 {s['p90']}, p99 {s['p99']}, max {s['max']}"
            )
    console.print(f"too long   {stats.too_long} records > --max-length {max_length} (would be rejected)")
    for reason, k in stats.untrainable.most_common(5):
        console.print(f"untrainable {k} × {reason}", highlight=False)
    console.print("token length histogram:")
    for line in histogram(stats.token_lengths, limit=max_length):
        console.print(line, highlight=False)
    if image:
        console.print(f"histogram image → {image}")


@data_app.command("inspect")
@user_errors
def data_inspect(
    files: Files,
    num: Annotated[int, typer.Option("--num", "-n", help="Records to show.")] = 3,
    skip: Annotated[int, typer.Option("--skip", help="Records to skip first.")] = 0,
    no_thinking: Annotated[bool, typer.Option("--no-thinking", help="Same as --thinking off.")] = False,
    thinking: Annotated[
        str, typer.Option("--thinking", help="data.thinking: auto, on, off or per-record (see docs/data.md).")
    ] = "auto",
    multi_turn: Annotated[
        str, typer.Option("--multi-turn", help="data.multi_turn: every_turn (one sample per turn) or last.")
    ] = "every_turn",
    empty_think_in_loss: Annotated[
        bool, typer.Option("--empty-think-in-loss", help="data.empty_think_in_loss: train the empty think block.")
    ] = False,
    max_length: MaxLenOpt = 1024,
    color: Annotated[
        bool | None, typer.Option("--color/--no-color", help="Colour trained tokens (default: on a terminal).")
    ] = None,
    model: ModelOpt = DEFAULT_MODEL,
    system_prompt: SystemOpt = None,
    format_: FormatOpt = "auto",
    kind: KindOpt = "sft",
    columns: ColumnsOpt = None,
    split: SplitOpt = None,
    dataset_dir: DatasetDirOpt = None,
    rag_index: Annotated[
        Path | None,
        typer.Option("--rag-index", help="data.rag.index: show the prompts with their passages (gold + distractors)."),
    ] = None,
    rag_distractors: Annotated[int, typer.Option("--rag-distractors", help="data.rag.distractors.")] = 3,
    rag_gold_fraction: Annotated[float, typer.Option("--rag-gold-fraction", help="data.rag.gold_fraction.")] = 0.8,
    seed: Annotated[int, typer.Option("--seed", help="data.seed (which records keep their gold passage).")] = 42,
    epoch: EpochOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Render records exactly as training sees them: each sample (inference prompt + trained completion), trained
    tokens in colour (or inside [[ ]] when piped), where the sample differs from the template's own render, and the
    parity check of the training tokens against the inference prompt. With `--epoch N`, as epoch N trains them
    with the data.augment of --config/--set (augmented records say how).

    Example: `thinktune data inspect my_train.jsonl -n 2 --thinking off | less`

    With retrieved passages (data.rag): `thinktune data inspect bundled:contracts/train --rag-index INDEX -n 1`
    Augmented: `thinktune data inspect my_train.jsonl --epoch 1 --set data.augment.template_fraction=1`
    """
    from thinktune.data.formats import RecordError
    from thinktune.data.inspection import masked_views
    from thinktune.data.reading import Reject
    from thinktune.data.records import conversation, record_kind
    from thinktune.data.render import THINKING_MODES, RenderOptions

    if no_thinking:
        thinking = "off"
    if thinking not in THINKING_MODES or multi_turn not in ("every_turn", "last"):
        raise UserError(
            f"--thinking {thinking} --multi-turn {multi_turn}: choose thinking from "
            f"{', '.join(THINKING_MODES)} and multi-turn from every_turn, last"
        )
    options = RenderOptions(system_prompt, thinking, multi_turn, empty_think_in_loss, max_length)
    augment = augmentation(config, set_, epoch, kind)

    sources = _sources(files, format_, kind, columns, split, dataset_dir)
    passages = None
    if rag_index is not None:
        from pydantic import ValidationError

        from thinktune.config import RagConfig
        from thinktune.data.passages import PassageAdder

        try:
            rag = RagConfig(index=str(rag_index), distractors=rag_distractors, gold_fraction=rag_gold_fraction)
        except ValidationError as e:
            err = e.errors()[0]
            raise UserError(f"--rag-{err['loc'][0].replace('_', '-')}: {err['msg']}") from None
        passages = PassageAdder(rag, seed)
    tokenizer, vision = load_tokenizer_only(model, with_vision=True)
    use_color = console.is_terminal if color is None else color
    out = console
    if use_color and not console.is_terminal:  # --color into a pipe or file: ANSI codes on request
        from rich.console import Console

        out = Console(force_terminal=True, soft_wrap=True)
    shown = 0
    records = list(islice((x for x in _items(sources, kind) if not isinstance(x, Reject)), skip, skip + num))
    if augment is not None:
        records = epoch_records(records, augment, epoch)
    for rec in records:
        where = f"{rec['meta']['source']}:{rec['meta']['line']}"
        if passages is not None:
            try:
                rec = passages(rec)
            except RecordError as e:
                out.print(f"── {where}: cannot be trained on: {e}", highlight=False, soft_wrap=True)
                shown += 1
                continue
            rag = rec["meta"]["rag"]
            kept = "gold kept" if rag["gold_kept"] else "gold left out"
            out.print(f"   passages: {', '.join(rag['passages'])} ({kept})", highlight=False, soft_wrap=True)
        which = ("chosen", "rejected") if record_kind(rec) == "preference" else ("chosen",)
        for side in which:
            label = f" ({side})" if len(which) > 1 else ""
            try:
                views = masked_views(tokenizer, {**rec, "messages": conversation(rec, side)}, options, vision)
            except RecordError as e:
                out.print(f"── {where}{label}: cannot be trained on: {e}", highlight=False, soft_wrap=True)
                continue
            for n, view in enumerate(views, start=1):
                part = f" · sample {n}/{len(views)}" if len(views) > 1 else ""
                out.print(
                    f"── {where}{label}{part} · {view.tokens} tokens · {view.trained_tokens} trained · "
                    f"parity {view.parity} ──",
                    highlight=False,
                    soft_wrap=True,
                    style="bold" if use_color else None,
                )
                if rec["meta"].get("augmented"):
                    how = rec["meta"]["augmented"]
                    out.print(f"   augmented in epoch {epoch}: {how}", highlight=False, soft_wrap=True, markup=False)
                for note in view.notes:
                    out.print(f"   note: {note}", highlight=False, soft_wrap=True)
                for image, n in view.images:
                    out.print(f"   image: {image} → {n} image tokens (never trained)", highlight=False, soft_wrap=True)
                if use_color:
                    out.print(view.rich(), highlight=False, markup=False, soft_wrap=True)
                else:
                    out.out(view.plain(), highlight=False)
        shown += 1
    if not shown:
        raise DataError(f"no usable records to show in {', '.join(files)} (skip={skip})")


@data_app.command("clean")
@user_errors
def data_clean(
    files: Files,
    output: Annotated[Path, typer.Option("--output", "-o", help="Cleaned JSONL to write.")],
    rejects: Annotated[Path | None, typer.Option("--rejects", help="Default: OUTPUT.rejects.jsonl")] = None,
    exact: Annotated[bool, typer.Option("--exact/--no-exact", help="Remove exact duplicates.")] = True,
    near: Annotated[bool, typer.Option("--near/--no-near", help="Remove near-duplicates (MinHash/LSH).")] = True,
    threshold: Annotated[float, typer.Option("--threshold", help="Jaccard similarity counted as near.")] = 0.85,
    dedup_on: Annotated[str, typer.Option("--dedup-on", help="conversation or prompt.")] = "conversation",
    min_answer_chars: Annotated[int, typer.Option("--min-answer-chars", help="Shortest answer kept.")] = 1,
    max_chars: Annotated[int | None, typer.Option("--max-chars", help="Longest record kept (characters).")] = None,
    max_repeat: Annotated[
        float, typer.Option("--max-repeat", help="Largest share of repeated word 3-grams in an answer (1 = off).")
    ] = 0.5,
    encoding_check: Annotated[
        bool, typer.Option("--encoding-check/--no-encoding-check", help="Remove U+FFFD, mojibake, control chars.")
    ] = True,
    pii: Annotated[bool, typer.Option("--pii", help="Replace e-mails, phones, card and ID numbers.")] = False,
    pii_kinds: Annotated[
        str, typer.Option("--pii-kinds", help="Comma list of email, phone, card, id, ip, name.")
    ] = "email,phone,card,id",
    names: Annotated[str | None, typer.Option("--names", help="Names to replace: comma list or a file.")] = None,
    name_heuristic: Annotated[
        bool, typer.Option("--name-heuristic", help="Also replace runs of capitalised words (kind name).")
    ] = False,
    format_: FormatOpt = "auto",
    kind: KindOpt = "sft",
    columns: ColumnsOpt = None,
    split: SplitOpt = None,
    dataset_dir: DatasetDirOpt = None,
) -> None:
    """Remove duplicates and low-quality records, optionally anonymise personal data; every removed record goes to
    the rejects file with the rule that removed it.

    Example: `thinktune data clean raw.jsonl -o clean.jsonl --pii --pii-kinds email,phone,name --names names.txt`
    """
    from pydantic import ValidationError

    from thinktune.data.cleaning import Cleaner
    from thinktune.data.reading import Reject, write_records, write_rejects
    from thinktune.data.spec import CleaningConfig

    name_list = []
    if names:
        name_list = Path(names).read_text().splitlines() if Path(names).is_file() else names.split(",")
    try:
        cfg = CleaningConfig(
            exact_dedup=exact,
            near_dedup=near,
            near_dedup_threshold=threshold,
            dedup_on=dedup_on,
            min_answer_chars=min_answer_chars,
            max_chars=max_chars,
            max_repeated_ngram_ratio=None if max_repeat >= 1 else max_repeat,
            reject_broken_encoding=encoding_check,
            pii=pii,
            pii_kinds=[k.strip() for k in pii_kinds.split(",") if k.strip()],
            pii_names=[n.strip() for n in name_list if n.strip()],
            pii_name_heuristic=name_heuristic,
        )
    except ValidationError as e:
        err = e.errors()[0]
        raise UserError(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}") from None
    sources = _sources(files, format_, kind, columns, split, dataset_dir)
    cleaner, removed = Cleaner(cfg), []

    def kept():
        for item in cleaner.stream(_items(sources, kind)):
            if isinstance(item, Reject):
                removed.append(item)
            else:
                yield item

    n = write_records(kept(), output)
    rejects_path = rejects or output.with_name(output.name.removesuffix(".jsonl") + ".rejects.jsonl")
    write_rejects(removed, rejects_path)
    report = cleaner.report
    unusable = sum(1 for r in removed if r.rule is None)
    console.print(f"kept {n} of {report.seen + unusable} records → {output}")
    by_rule = Counter(r.rule or "unusable" for r in removed)
    if by_rule:
        console.print("removed: " + ", ".join(f"{rule} {k}" for rule, k in by_rule.most_common()), highlight=False)
    if pii:
        counts = ", ".join(f"{k} {v}" for k, v in report.pii.most_common()) or "none found"
        console.print(f"personal data replaced: {counts}", highlight=False)
    console.print(f"rejects ({len(removed)}) → {rejects_path}")


@data_app.command("split")
@user_errors
def data_split(
    files: Files,
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Folder for <split>.jsonl files.")],
    ratio: Annotated[str, typer.Option("--ratio", help="0.9, or train=0.8,validation=0.1,test=0.1")] = "0.9",
    by: Annotated[str | None, typer.Option("--by", help="Field whose equal values stay in one split.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the assignment.")] = 0,
    threshold: Annotated[
        float, typer.Option("--threshold", help="Near-duplicate similarity kept together (0 = exact only).")
    ] = 0.85,
    on: Annotated[str, typer.Option("--on", help="prompt or conversation: what duplicates are judged on.")] = "prompt",
    format_: FormatOpt = "auto",
    kind: KindOpt = "sft",
    columns: ColumnsOpt = None,
    split: SplitOpt = None,
    dataset_dir: DatasetDirOpt = None,
) -> None:
    """Split into train/test (or any named parts) so that duplicates and near-duplicates never straddle splits.

    Example: `thinktune data split all.jsonl -o splits/ --ratio train=0.9,test=0.1 --by source`
    """
    from thinktune.data.reading import Reject, write_records, write_rejects
    from thinktune.data.split import parse_ratios, split_records

    try:
        ratios = parse_ratios(ratio)
    except ValueError as e:
        raise UserError(str(e)) from None
    if on not in ("prompt", "conversation"):
        raise UserError(f"--on {on}: choose prompt or conversation")
    records, rejects = [], []
    for item in _items(_sources(files, format_, kind, columns, split, dataset_dir), kind):
        (rejects if isinstance(item, Reject) else records).append(item)
    if not records:
        raise DataError(f"no usable records in {', '.join(files)}")
    result = split_records(records, ratios, by, seed, threshold or None, on)
    for name, part in result.splits.items():
        write_records(part, output_dir / f"{name}.jsonl")
        console.print(f"{name}: {len(part)} records ({len(part) / len(records):.1%}) → {output_dir / f'{name}.jsonl'}")
    console.print(f"{result.clusters} groups; {result.merged} records kept with a duplicate or group member")
    if rejects:
        write_rejects(rejects, output_dir / "rejects.jsonl")
        console.print(f"{len(rejects)} unusable records → {output_dir / 'rejects.jsonl'}")


@data_app.command("synth")
@user_errors
def data_synth(
    files: Annotated[
        list[str],
        typer.Argument(
            help="Knowledge graph: triples (head,relation,tail columns) or a table (one row per entity), as "
            "CSV/TSV/JSONL/JSON; or bundled:finance_graph."
        ),
    ],
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Folder for train.jsonl, test.jsonl, ...")],
    test_fraction: Annotated[
        float, typer.Option("--test-fraction", help="Share of questions for test.jsonl (0: train.jsonl only).")
    ] = 0.2,
    split_key: Annotated[
        str, typer.Option("--split-key", help="Held out from train: answer (answer entities) or path (every entity).")
    ] = "answer",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sampling, order and split.")] = 0,
    key: Annotated[
        str | None, typer.Option("--key", help="Table: the column naming the entity (default first).")
    ] = None,
    max_hops: Annotated[int, typer.Option("--max-hops", help="Longest multi-hop path: 2 or 3.")] = 3,
    max_conditions: Annotated[int, typer.Option("--max-conditions", help="Most conditions at once: 2 or 3.")] = 3,
    max_answers: Annotated[int, typer.Option("--max-answers", help="Most entities a listed answer holds.")] = 3,
    max_per_kind: Annotated[
        int | None, typer.Option("--max-per-kind", help="Seeded sample of at most N questions per kind.")
    ] = None,
    teacher: Annotated[
        str | None, typer.Option("--teacher", help="Reword questions and traces: model or OpenAI-compatible URL.")
    ] = None,
    endpoint_model: Annotated[str | None, typer.Option(help="Teacher endpoint: model name to request.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Teacher: generation budget per rewrite.")] = 768,
    temperature: Annotated[float, typer.Option(help="Teacher: sampling temperature.")] = 0.7,
) -> None:
    """Multi-hop and multi-condition reasoning QA from a knowledge graph: unique (or fully listed) answers, a trace
    of one fact per step, the answer boxed; split so test answers are held out of train (docs/data.md).

    Example: `thinktune data synth bundled:finance_graph -o synth/ --test-fraction 0.2 --seed 0`
    """
    from thinktune.data.graph import read_graph
    from thinktune.data.reading import write_records, write_rejects
    from thinktune.data.synth import SynthOptions, split_by_entity, synthesize, to_record

    options = SynthOptions(max_hops, max_conditions, max_answers, max_per_kind, seed)
    options.check()
    if not 0 <= test_fraction < 1 or split_key not in ("answer", "path"):
        split_by_entity([], test_fraction, split_key)  # raises the one-line refusal
    make_teacher = distill = None
    if teacher:
        from pydantic import ValidationError

        from thinktune.train.distill import DistillConfig, make_teacher

        try:
            distill = DistillConfig(
                teacher=teacher, n=1, max_new_tokens=max_new_tokens, temperature=temperature,
                endpoint_model=endpoint_model, require_reasoning=False,
            )  # fmt: skip
        except ValidationError as e:
            err = e.errors()[0]
            raise UserError(f"--{str(err['loc'][0]).replace('_', '-')}: {err['msg']}") from None
    loaded = read_graph(files, key)
    qas = synthesize(loaded.graph, options)
    if not qas:
        raise DataError(f"{', '.join(files)}: no question has a unique answer in this graph (see docs/data.md)")
    split = split_by_entity(qas, test_fraction, split_key, seed)
    summary: dict[str, Any] = {
        "triples": len(loaded.graph.triples),
        "rejected_rows": len(loaded.rejects),
        "questions": dict(Counter(f"{q.kind}/{q.hops if q.kind == 'multi_hop' else len(q.conditions)}" for q in qas)),
        "train": len(split.train),
        "test": len(split.test),
        "dropped_by_split": len(split.dropped),
        "split_key": split_key,
        "seed": seed,
    }
    parts = {"train": split.train, "test": split.test} if test_fraction else {"train": split.train}
    if make_teacher is not None:
        from thinktune.train.verbalise import verbalise

        teacher_fn, counts = make_teacher(distill), Counter()
        for name in parts:
            parts[name], part_counts = verbalise(parts[name], teacher_fn, teacher)
            counts.update(part_counts)
        summary["teacher"] = dict(counts)
    output_dir.mkdir(parents=True, exist_ok=True)
    for name, part in parts.items():
        write_records((to_record(q) for q in part), output_dir / f"{name}.jsonl")
        console.print(f"{name}: {len(part)} questions → {output_dir / f'{name}.jsonl'}", highlight=False)
    write_rejects(loaded.rejects, output_dir / "rejects.jsonl")
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(summary["questions"].items()))
    console.print(f"{len(qas)} questions from {summary['triples']} triples ({kinds})", highlight=False, soft_wrap=True)
    if split.dropped:
        console.print(f"{len(split.dropped)} questions dropped: their {split_key} entities are on both sides")
    if "teacher" in summary:
        t = summary["teacher"]
        kept = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in sorted(t.items()) if k != "rewritten") or "none"
        console.print(f"teacher: {t.get('rewritten', 0)} reworded; template wording kept: {kept}", highlight=False)
    console.print(f"rejects ({len(loaded.rejects)}) → {output_dir / 'rejects.jsonl'}", highlight=False)
