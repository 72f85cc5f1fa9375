"""Data stage: read any supported format → canonical records → chat-template render → token ids + loss mask.

reading.py      files (JSONL streamed, JSON, CSV/TSV, Parquet, `datasets` dirs) → records + Rejects(file, line, reason)
formats.py      SFT adapters (messages, sharegpt, alpaca, question_answer, query_response, text_context)
preference.py   preference-pair adapters; task.py: prompt + answer adapters; columns.py: column mappings
records.py      the three record kinds and what later stages ask of any record
spec.py         DatasetSpec, ColumnMap, CleaningConfig, AugmentConfig (pydantic; config.py may import them)
dataset_info.py LLaMA-Factory data folders: dataset_info.json names → references (config.py imports it)
cleaning.py     quality filters, PII (pii.py), exact/near dedup (dedup.py); language.py: script detection
render.py       chat template + loss mask; inspection.py: the masked view of `thinktune data inspect`
prepare.py      the data stage of a run (Arrow, datasets.map, cache.py); packing.py + collate.py: batches
balance.py      sampling weights; split.py: leak-free splits; augment.py: the augmenters (templates,
                back-translation) of data.augment; back_translation.py: translations cached per translator
stats.py        `thinktune data stats`
See docs/data.md.
"""
