"""The data stage of a run: read the configured datasets, clean, tokenise, and account for every record not used.

    read (streaming, any format) ─► clean (optional) ─► passages (data.rag) ─► Arrow rows
        ─► render + tokenise (datasets.map, num_proc) ─► cache (content hash) ─► weights per dataset
        ─► max_train_samples ─► TrainingData

A record becomes one sample, or several with `data.multi_turn=every_turn` where its turns cannot share a sequence
(column `part` numbers them; `first` marks a record's first row, so records are counted once).

Rows are written to Arrow as they are read, so a file larger than memory only costs disk; the tokenised result
stays memory-mapped and `TrainingData.samples` reads rows on demand. Rejected rows (unreadable, cleaned away,
too long) stay in the same table with their reason, so a cached run reports the same rejects as the first one.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerBase

from thinktune.config import DataConfig, RagConfig
from thinktune.data.augment import augment_record, build_augmenters, draws, first_prompt, plan
from thinktune.data.cache import cache_key as make_key
from thinktune.data.cache import code_digest, data_cache_dir, publish, tokenizer_digest
from thinktune.data.cleaning import Cleaner
from thinktune.data.formats import RecordError
from thinktune.data.passages import PassageAdder, rag_key
from thinktune.data.reading import LoadedRecords, Reject, check_bad_fraction, iter_records, source_digest
from thinktune.data.render import RenderOptions, TokenizedSample, tokenize_record, tokenize_records
from thinktune.data.spec import CleaningConfig, DataOptions, DatasetSpec, as_spec
from thinktune.errors import DataError

WRITE_BATCH = 1000
STALE_BUILD_S = 24 * 3600


@dataclass
class TrainingData:
    samples: Sequence[TokenizedSample]
    rejects: list[Reject] = field(default_factory=list)
    total_records: int = 0
    records: Sequence[dict[str, Any]] = ()  # canonical records, aligned with samples
    parts: Sequence[int] | None = None  # which sample of its record each sample is
    cache_hit: bool = False
    cleaning: dict[str, Any] | None = None  # CleaningReport.to_json() when the cleaning stage ran
    keys: Sequence[str] | None = None  # per sample: its record's "file:line:copy" (augmentation draws by it)
    key: str | None = None  # the tokenised dataset's cache key (None when data.cache is off)


class ArrowRows(Sequence):
    """Rows of a tokenised Arrow dataset, picked by index (upsampled rows repeat), decoded on access."""

    def __init__(self, ds: Any, indices: np.ndarray, decode: Any) -> None:
        self._ds, self._idx, self._decode = ds, indices, decode

    def __len__(self) -> int:
        return len(self._idx)

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self._decode(self._ds[int(self._idx[i])])

    def lengths(self) -> list[int]:
        """Token count of every row, read from the `length` column without decoding the rows."""
        col = np.asarray(self._ds.data.column("length").to_numpy())
        return col[self._idx].tolist()


def _sample(row: dict[str, Any]) -> TokenizedSample:
    return TokenizedSample(row["input_ids"], row["labels"], row.get("images") or [])


def _record(row: dict[str, Any]) -> dict[str, Any]:
    return json.loads(row["record"])


def _features():
    from datasets import Features, List, Value

    return Features(
        {
            "record": Value("string"),
            "dataset": Value("int32"),
            "file": Value("string"),
            "line": Value("int64"),
            "reason": Value("string"),
            "rule": Value("string"),
            "input_ids": List(Value("int32")),
            "labels": List(Value("int32")),
            "length": Value("int32"),
            "part": Value("int32"),
            "images": List(Value("string")),
        }
    )


def _rows(specs: list[DatasetSpec], cleaner: Cleaner | None, passages: Any = None) -> Iterator[dict[str, Any]]:
    for d, spec in enumerate(specs):
        items = iter_records(spec)
        if cleaner is not None:
            items = cleaner.stream(items)
        if passages is not None:
            items = passages.stream(items)
        for item in items:
            if isinstance(item, Reject):
                yield {"dataset": d, "file": item.file, "line": item.line, "reason": item.reason, "rule": item.rule}
            else:
                meta = item["meta"]
                yield {
                    "record": json.dumps(item, ensure_ascii=False),
                    "dataset": d,
                    "file": meta["source"],
                    "line": meta["line"],
                }


def write_arrow(rows: Iterator[dict[str, Any]], path: Path) -> int:
    """Stream rows into an Arrow IPC file (what `datasets.Dataset.from_file` reads), WRITE_BATCH at a time."""
    import pyarrow as pa

    schema = _features().arrow_schema
    n = 0
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        buf: list[dict[str, Any]] = []
        for row in rows:
            buf.append(row)
            if len(buf) == WRITE_BATCH:
                writer.write_batch(pa.RecordBatch.from_pylist(buf, schema=schema))
                n, buf = n + len(buf), []
        if buf:
            writer.write_batch(pa.RecordBatch.from_pylist(buf, schema=schema))
            n += len(buf)
    return n


SAMPLE_COLUMNS = ("input_ids", "labels", "length", "part", "images")


def tokenize_rows(
    batch: dict[str, list], tokenizer: PreTrainedTokenizerBase, options: RenderOptions, vision: Any = None
) -> dict[str, list]:
    """datasets.map function: the readable rows of a batch → one row per sample (a failure: the row with its reason)."""
    kept = [k for k in batch if k not in SAMPLE_COLUMNS]
    out: dict[str, list] = {k: [] for k in (*kept, *SAMPLE_COLUMNS)}
    todo = [i for i, reason in enumerate(batch["reason"]) if reason is None]
    recs = [json.loads(batch["record"][i]) for i in todo]
    results = dict(zip(todo, tokenize_records(tokenizer, recs, options, vision), strict=True))
    for i in range(len(batch["record"])):
        result = results.get(i)
        samples = result if isinstance(result, list) else [None]
        for part, sample in enumerate(samples):
            for key in kept:
                out[key].append(batch[key][i])
            if isinstance(result, RecordError):
                out["reason"][-1] = str(result)
            out["input_ids"].append(sample.input_ids if sample else None)
            out["labels"].append(sample.labels if sample else None)
            out["length"].append(len(sample.input_ids) if sample else 0)
            out["part"].append(part)
            out["images"].append(sample.images if sample else [])
    return out


@contextlib.contextmanager
def _quiet_datasets(quiet: bool) -> Iterator[None]:
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    if quiet:
        disable_progress_bars()
    try:
        yield
    finally:
        if quiet and not was_disabled:
            enable_progress_bars()


def build_dataset(
    specs: list[DatasetSpec],
    tokenizer: PreTrainedTokenizerBase,
    options: RenderOptions,
    cleaning: CleaningConfig | None,
    out_dir: Path,
    num_proc: int = 1,
    vision: Any = None,
    rag: RagConfig | None = None,
    seed: int = 42,
) -> dict[str, Any]:
    """Read, clean, add retrieved passages (`rag`, data/passages.py) and tokenise into a `datasets` directory at
    out_dir; returns the cleaning report (or None)."""
    from datasets import Dataset

    cleaner = Cleaner(cleaning) if cleaning else None
    passages = PassageAdder(rag, seed) if rag else None
    work = out_dir.with_name(out_dir.name + ".work")
    work.mkdir(parents=True)
    try:
        n = write_arrow(_rows(specs, cleaner, passages), work / "rows.arrow")
        ds = Dataset.from_file(str(work / "rows.arrow"))
        if n:
            ds = ds.map(
                tokenize_rows,
                batched=True,
                batch_size=256,
                fn_kwargs={"tokenizer": tokenizer, "options": options, "vision": vision},
                num_proc=min(num_proc, n) if num_proc > 1 else None,
                features=_features(),
                cache_file_name=str(work / "tokenized.arrow"),
                load_from_cache_file=False,
                new_fingerprint="tokenized",
                desc="tokenising",
            )
        ds.save_to_disk(str(out_dir))
        report = cleaner.report.to_json() if cleaner else None
        (out_dir / "thinktune.json").write_text(json.dumps({"cleaning": report}))
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def dataset_key(
    specs: list[DatasetSpec],
    tokenizer: PreTrainedTokenizerBase,
    cfg: DataConfig,
    cleaning: CleaningConfig | None,
    vision: Any = None,
) -> str:
    parts = {
        **({"vision": vision.key()} if vision is not None else {}),
        "inputs": [{**spec.model_dump(exclude={"weight"}), "sha256": source_digest(spec.path)} for spec in specs],
        "tokenizer": tokenizer_digest(tokenizer),
        "render": RenderOptions.from_config(cfg).__dict__,
        "cleaning": cleaning.model_dump() if cleaning else None,
        **({"rag": rag_key(cfg.rag), "seed": cfg.seed} if cfg.rag else {}),
        "code": code_digest(),
    }
    return make_key(parts)


def remove_stale_builds(root: Path, older_than_s: float = STALE_BUILD_S) -> None:
    """Builds of runs that were killed leave `.build-*` folders; remove those nobody touched for a day."""
    now = time.time()
    for p in root.glob(".build-*"):
        with contextlib.suppress(OSError):
            if now - p.stat().st_mtime > older_than_s:
                shutil.rmtree(p, ignore_errors=True)


def load_or_build(
    cfg: DataConfig, tokenizer: PreTrainedTokenizerBase, opts: DataOptions, quiet: bool = True, vision: Any = None
) -> tuple[Any, list[DatasetSpec], bool, dict | None, str | None]:
    """(tokenised dataset, its specs, whether the cache had it, cleaning report, cache key or None)."""
    from datasets import load_from_disk

    specs = [as_spec(item, cfg.format) for item in cfg.train]
    root = data_cache_dir(opts.cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_builds(root)
    key = dataset_key(specs, tokenizer, cfg, opts.cleaning, vision) if opts.cache else None
    with _quiet_datasets(quiet):
        if opts.cache:
            final = root / key
            if (final / "thinktune.json").is_file():
                meta = json.loads((final / "thinktune.json").read_text())
                return load_from_disk(str(final)), specs, True, meta["cleaning"], key
        tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
        try:
            report = build_dataset(
                specs, tokenizer, RenderOptions.from_config(cfg), opts.cleaning, tmp / "ds", opts.num_proc, vision,
                cfg.rag, opts.seed,
            )  # fmt: skip
            if not opts.cache:
                return load_from_disk(str(tmp / "ds"), keep_in_memory=True), specs, False, report, None
            publish(tmp / "ds", final)
            return load_from_disk(str(final)), specs, False, report, key
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def weighted_indices(datasets_col: np.ndarray, ok: np.ndarray, specs: list[DatasetSpec], seed: int) -> np.ndarray:
    """Row indices to train on: each dataset's usable rows, repeated int(weight) times plus a seeded random
    fraction for the rest of the weight (0.5 = a random half)."""
    picked = []
    for d, spec in enumerate(specs):
        rows = ok[datasets_col[ok] == d]
        whole, frac = divmod(spec.weight, 1)
        picked += [rows] * int(whole)
        if frac and len(rows):
            rng = np.random.default_rng([seed, d])
            picked.append(rng.choice(rows, size=round(frac * len(rows)), replace=False))
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def prepare_training_data(
    cfg: DataConfig, tokenizer: PreTrainedTokenizerBase, options: DataOptions | None = None, vision: Any = None
) -> TrainingData:
    """Training samples for `cfg.train` (paths or DatasetSpecs), with every unused record as a reject; `vision`
    (models/vision.py): a vision-language model's way of taking images, so that image records train."""
    import pyarrow.compute as pc

    opts = options or DataOptions.from_config(cfg)
    ds, specs, hit, report, key = load_or_build(cfg, tokenizer, opts, vision=vision)
    reason = ds.data.column("reason")
    ok = np.flatnonzero(pc.is_null(reason).to_numpy(zero_copy_only=False))
    bad = np.flatnonzero(pc.is_valid(reason).to_numpy(zero_copy_only=False))
    rejected = ds.select(bad).select_columns(["file", "line", "reason", "rule"]).to_list() if len(bad) else []
    rejects = [Reject(r["file"], r["line"], r["reason"], r["rule"]) for r in rejected]
    unusable = [r for r in rejects if r.rule is None]  # cleaning removes records on purpose: not a data error
    records = int((ds.data.column("part").to_numpy() == 0).sum()) if len(ds) else 0
    check_bad_fraction(
        LoadedRecords(records=[{}] * (records - len(rejects)), rejects=unusable), cfg.max_bad_fraction, "training data"
    )
    check_parity(rejects, records, cfg.max_parity_mismatch)
    indices = weighted_indices(ds.data.column("dataset").to_numpy(), ok, specs, opts.seed)
    if cfg.max_train_samples:
        indices = indices[: cfg.max_train_samples]
    columns = ds.select_columns(["input_ids", "labels", "length", "record", "part", "images"])
    return TrainingData(
        samples=ArrowRows(columns, indices, _sample),
        rejects=rejects,
        total_records=records,
        records=ArrowRows(columns, indices, _record),
        parts=ds.data.column("part").to_numpy()[indices].tolist(),
        cache_hit=hit,
        cleaning=report,
        keys=record_keys(ds, indices),
        key=key,
    )


def record_keys(ds: Any, indices: np.ndarray) -> list[str]:
    """Per picked row: "file:line:copy" of its record — the samples of one record share it, and an upsampled row's
    copies (data.train weights) differ by `copy`."""
    files = ds.data.column("file").take(indices).to_pylist() if len(indices) else []
    lines = ds.data.column("line").take(indices).to_pylist() if len(indices) else []
    seen: Counter[int] = Counter()
    keys = []
    for row, f, line in zip(indices.tolist(), files, lines, strict=True):
        keys.append(f"{f}:{line}:{seen[row]}")  # augment.record_key's spelling
        seen[row] += 1
    return keys


def check_parity(rejects: list[Reject], records: int, limit: float) -> None:
    """Refuse the run when too many records train something other than what the model sees at inference."""
    mismatched = [r for r in rejects if r.reason.startswith("parity mismatch")]
    if mismatched and len(mismatched) / max(records, 1) > limit:
        first = mismatched[0]
        raise DataError(
            f"training data: {len(mismatched)}/{records} records tokenise differently from their inference prompt "
            f"(> data.max_parity_mismatch={limit}); first: {first.file}:{first.line}: {first.reason}"
        )


class EpochSamples(Sequence):
    """One epoch's samples: the base samples with the augmented ones in their place (`augmented`: index → label)."""

    def __init__(
        self, base: Sequence[TokenizedSample], rows: Sequence[TokenizedSample], where: dict[int, int], how: list[str]
    ) -> None:
        self._base, self._rows, self._where = base, rows, where
        self.augmented = {i: how[r] for i, r in where.items()}

    def __len__(self) -> int:
        return len(self._base)

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        r = self._where.get(i)
        return self._base[i] if r is None else self._rows[r]

    def counts(self) -> Counter[str]:
        """Augmented samples per augmenter (a sample two augmenters changed counts for both)."""
        return Counter(label.split(":")[0] for how in self.augmented.values() for label in how.split("+"))


def epoch_samples(
    data: TrainingData,
    tokenizer: PreTrainedTokenizerBase,
    cfg: DataConfig,
    epoch: int,
    options: DataOptions | None = None,
    translations: dict[str, str | None] | None = None,
    vision: Any = None,
) -> Sequence[TokenizedSample]:
    """The samples of one epoch: with `data.augment`, each record drawn for an augmenter in this epoch (seeded by
    data.seed, the epoch and the record's key) has its prompt rewritten and re-tokenised; a variant that no longer
    fits max_length keeps the original. `translations` (prompt → round trip) feed back_translation. With the data
    cache on, an epoch's augmented samples are built once and kept next to the tokenised dataset."""
    from datasets import Dataset, load_from_disk

    opts = options or DataOptions.from_config(cfg)
    if opts.augment is None or not opts.augment.active():
        return data.samples
    augmenters = build_augmenters(opts.augment, translations)
    final = None
    if opts.cache and data.key:
        parts = {
            "data": data.key,
            "samples": make_key({"keys": list(data.keys or ()), "parts": list(data.parts or ())}),
            "augment": opts.augment.model_dump(),
            "translations": make_key(dict(sorted((translations or {}).items()))),
            "seed": opts.seed,
            "epoch": epoch,
            "code": code_digest(),
        }
        final = data_cache_dir(opts.cache_dir) / f"epoch-{make_key(parts)}"
        if (final / "dataset_info.json").is_file():
            ds = load_from_disk(str(final))
            return EpochSamples(data.samples, ArrowRows(ds, np.arange(len(ds)), _sample), _where(ds), ds["how"])
    rows = _augment_epoch(data, tokenizer, RenderOptions.from_config(cfg), augmenters, opts.seed, epoch, vision)
    if final is None:
        samples = [s for _, s, _ in rows]
        return EpochSamples(data.samples, samples, {i: r for r, (i, _, _) in enumerate(rows)}, [h for *_, h in rows])
    ds = Dataset.from_dict(
        {
            "index": [i for i, _, _ in rows],
            "input_ids": [s.input_ids for _, s, _ in rows],
            "labels": [s.labels for _, s, _ in rows],
            "images": [s.images for _, s, _ in rows],
            "how": [h for *_, h in rows],
        }
    )
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=final.parent))
    try:
        with _quiet_datasets(True):
            ds.save_to_disk(str(tmp / "ds"))
        publish(tmp / "ds", final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ds = load_from_disk(str(final))
    return EpochSamples(data.samples, ArrowRows(ds, np.arange(len(ds)), _sample), _where(ds), ds["how"])


def _where(ds: Any) -> dict[int, int]:
    return {int(i): r for r, i in enumerate(ds["index"])}


def _augment_epoch(
    data: TrainingData,
    tokenizer: PreTrainedTokenizerBase,
    options: RenderOptions,
    augmenters: list[Any],
    seed: int,
    epoch: int,
    vision: Any,
) -> list[tuple[int, TokenizedSample, str]]:
    """(sample index, augmented sample, label) for every sample that an augmenter changes in this epoch."""
    out = []
    done: dict[str, list[TokenizedSample] | None] = {}  # the samples of one record share their key
    for i, key in enumerate(data.keys or ()):
        if key not in done:
            done[key] = None
            planned = plan(augmenters, key, seed, epoch)
            if planned:
                rec = augment_record(data.records[i], planned)
                if rec is not data.records[i]:
                    with contextlib.suppress(RecordError):
                        done[key] = (tokenize_record(tokenizer, rec, options, vision), rec["meta"]["augmented"])
        if done[key] is None:
            continue
        samples, how = done[key]
        part = data.parts[i] if data.parts is not None else 0
        if part < len(samples):
            out.append((i, samples[part], how))
    return out


def prompts_to_translate(data: TrainingData, options: DataOptions, epochs: int) -> list[str]:
    """The prompts back_translation acts on in epochs 0 … epochs-1: the ones to translate before training."""
    bt = options.augment.back_translation if options.augment else None
    if bt is None or not bt.fraction:
        return []
    prompts: set[str] = set()
    seen: set[str] = set()
    for i, key in enumerate(data.keys or ()):
        if key in seen:
            continue
        seen.add(key)
        if any(draws("back_translation", key, options.seed, e).random() < bt.fraction for e in range(epochs)):
            prompt = first_prompt(data.records[i])
            if prompt is not None:
                prompts.add(prompt)
    return sorted(prompts)
