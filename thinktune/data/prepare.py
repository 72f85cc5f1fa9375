"""The data stage of a run: read the configured files, tokenize, and account for every record not used."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from thinktune.config import DataConfig
from thinktune.data.formats import RecordError
from thinktune.data.reading import LoadedRecords, Reject, check_bad_fraction, read_records
from thinktune.data.render import TokenizedSample, tokenize_conversation


@dataclass
class TrainingData:
    samples: list[TokenizedSample]
    rejects: list[Reject] = field(default_factory=list)
    total_records: int = 0


def prepare_training_data(cfg: DataConfig, tokenizer: PreTrainedTokenizerBase) -> TrainingData:
    loaded = LoadedRecords()
    for ref in cfg.train:
        loaded.extend(read_records(ref, cfg.format))
    samples: list[TokenizedSample] = []
    rejects = list(loaded.rejects)
    for rec in loaded.records:
        try:
            samples.append(tokenize_conversation(tokenizer, rec["messages"], cfg.system_prompt, cfg.max_length))
        except RecordError as e:
            rejects.append(Reject(rec["meta"]["source"], rec["meta"]["line"], str(e)))
    check_bad_fraction(LoadedRecords(records=samples, rejects=rejects), cfg.max_bad_fraction, "training data")
    if cfg.max_train_samples:
        samples = samples[: cfg.max_train_samples]
    return TrainingData(samples, rejects, loaded.total)
