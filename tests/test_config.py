"""Config loading: quickstart, shipped YAMLs, --set overrides, and error messages that name file, line and field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from thinktune.config import SECTIONS, RunConfig, field_reference, load_config, to_yaml, validate
from thinktune.errors import ConfigError, UserError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_YAMLS = sorted((ROOT / "thinktune" / "configs").glob("*.yaml")) + sorted(
    (ROOT / "examples").glob("*.yaml") if (ROOT / "examples").is_dir() else []
)
ACCELERATE_YAMLS = sorted((ROOT / "examples" / "accelerate").glob("*.yaml"))


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_quickstart_loads_and_validates():
    cfg = load_config(None)
    assert isinstance(cfg, RunConfig)
    assert cfg.name == "quickstart"
    assert cfg.data.train == ["bundled:arithmetic/train"]
    assert cfg.data.test == "bundled:arithmetic/test"
    assert cfg.run_dir == Path("runs") / "quickstart"
    # round trip: the dumped YAML validates to the same config
    assert validate(yaml.safe_load(to_yaml(cfg))) == cfg


def test_shipped_yamls_found():
    assert any(p.name == "quickstart.yaml" for p in SHIPPED_YAMLS)


@pytest.mark.parametrize("path", SHIPPED_YAMLS, ids=[str(p.relative_to(ROOT)) for p in SHIPPED_YAMLS])
def test_shipped_yaml_validates(path: Path):
    assert isinstance(load_config(path), RunConfig)


@pytest.mark.parametrize(
    ("override", "getter", "expected"),
    [
        ("train.learning_rate=1e-4", lambda c: c.train.learning_rate, 1e-4),
        ("train.batch_size=3", lambda c: c.train.batch_size, 3),
        ("train.max_grad_norm=null", lambda c: c.train.max_grad_norm, None),
        ("data.train=[a.jsonl,b.jsonl]", lambda c: c.data.train, ["a.jsonl", "b.jsonl"]),
        ("data.train=only.jsonl", lambda c: c.data.train, ["only.jsonl"]),  # one string becomes a list
        ("eval.before=false", lambda c: c.eval.before, False),
        ("eval.after=true", lambda c: c.eval.after, True),
        ("method.target_modules=[q_proj,v_proj]", lambda c: c.method.target_modules, ["q_proj", "v_proj"]),
        ("data.system_prompt=Think first.", lambda c: c.data.system_prompt, "Think first."),
        ("output_dir=runs/x", lambda c: c.run_dir, Path("runs/x")),
        ("name=demo", lambda c: c.run_dir, Path("runs/demo")),
    ],
)
def test_set_overrides(override, getter, expected):
    value = getter(load_config(None, [override]))
    assert value == expected
    assert type(value) is type(expected)


def test_overrides_apply_on_top_of_a_file(tmp_path):
    p = write(tmp_path, "name: mine\ntrain:\n  learning_rate: 0.5\n")
    cfg = load_config(p, ["train.learning_rate=1e-4", "train.epochs=2"])
    assert (cfg.name, cfg.train.learning_rate, cfg.train.epochs) == ("mine", 1e-4, 2.0)


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("train.learnin_rate=1", ["unknown key 'train.learnin_rate'", "did you mean 'train.learning_rate'"]),
        ("modle.name_or_path=x", ["unknown key 'modle'", "did you mean 'model'"]),
        ("eval.max_new_token=5", ["unknown key 'eval.max_new_token'", "did you mean 'eval.max_new_tokens'"]),
        ("train.batch_size=abc", ["train.batch_size", "valid integer", "'abc'"]),
        ("train.learning_rate=-1", ["train.learning_rate", "greater than 0"]),
        ("train.lr_scheduler=step", ["train.lr_scheduler", "'step'"]),
        ("noequals", ["expected KEY=VALUE"]),
        ("=3", ["expected KEY=VALUE"]),
        ("name.x=1", ["'name' is a value, not a section"]),
    ],
)
def test_bad_overrides(override, fragments):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    for f in fragments:
        assert f in str(e.value)
    assert isinstance(e.value, UserError)
    assert "\n" not in str(e.value)


# (yaml text, expected line, fragments of the message)
BAD_FILES = [
    (
        "name: x\ntrain:\n  epochs: 1\n  learnin_rate: 0.1\n",
        4,
        ["unknown key 'train.learnin_rate'", "did you mean 'train.learning_rate'"],
    ),
    ("name: x\nmodle:\n  name_or_path: a\n", 2, ["unknown key 'modle'", "did you mean 'model'"]),
    (
        "name: x\n\ndata:\n  max_length: 64\n  sytem_prompt: hi\n",
        5,
        ["unknown key 'data.sytem_prompt'", "did you mean 'data.system_prompt'"],
    ),
    ("name: x\nzzzzzz: 1\n", 2, ["unknown key 'zzzzzz'"]),
    ("name: x\ntrain:\n  epochs: 1\n  batch_size: abc\n", 4, ["train.batch_size", "valid integer", "'abc'"]),
    ("eval:\n  before: maybe\n", 2, ["eval.before", "'maybe'"]),
    ("data:\n  train:\n    - a.jsonl\n    - {x: 1}\n", 4, ["data.train", "valid string"]),
    ("data:\n  max_bad_fraction: 2\n", 2, ["data.max_bad_fraction", "less than or equal to 1"]),
]


@pytest.mark.parametrize(("text", "line", "fragments"), BAD_FILES)
def test_bad_file_names_path_line_and_field(tmp_path, text, line, fragments):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}:{line}: "), msg
    for f in fragments:
        assert f in msg
    if "unknown key 'zzzzzz'" in fragments:
        assert "did you mean" not in msg  # no suggestion when nothing is close


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("name: x\nmodel:\n  name_or_path: [a\ntrain:\n  epochs: 1\n", 4),
        ("name: x\ntrain:\n  epochs: 1\n   batch_size: 3\n", 4),
        ("name: x\n\tbad: tab\n", 2),
    ],
)
def test_invalid_yaml_reports_line(tmp_path, text, line):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(p))}:{line}: invalid YAML"):
        load_config(p)


def test_top_level_must_be_a_mapping(tmp_path):
    p = write(tmp_path, "- a\n- b\n")
    with pytest.raises(ConfigError, match=r":1: the top level must be a mapping"):
        load_config(p)


def test_empty_file_gives_defaults(tmp_path):
    assert load_config(write(tmp_path, "")) == RunConfig()


def test_missing_config_file(tmp_path):
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError, match="config file not found") as e:
        load_config(missing)
    assert str(missing) in str(e.value)


def test_config_is_read_only():
    cfg = load_config(None)
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen-instance error
        cfg.train.learning_rate = 1.0  # type: ignore[misc]


def test_field_reference_covers_every_section_and_key():
    ref = field_reference()
    for section, model in SECTIONS.items():
        if not section:
            continue
        assert f"### `{section}`" in ref
        for name in model.model_fields:
            assert f"| `{section}.{name}` |" in ref


def test_error_from_an_override_names_the_override():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.learnin_rate=1"])
    assert str(e.value).startswith("--set train.learnin_rate=1: unknown key")
    with pytest.raises(ConfigError, match=r"^--set train.batch_size=abc: train.batch_size"):
        load_config(None, ["train.batch_size=abc"])


def test_numeric_looking_strings_stay_strings():
    cfg = load_config(None, ["output_dir=2024", "name=5", "model.name_or_path=123"])
    assert cfg.output_dir == "2024" and cfg.name == "5" and cfg.model.name_or_path == "123"


@pytest.mark.parametrize("path", ACCELERATE_YAMLS, ids=[p.name for p in ACCELERATE_YAMLS])
def test_accelerate_configs_parse_with_accelerate(path):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(path))
    assert cfg.num_processes >= 1
    assert str(getattr(cfg.distributed_type, "value", cfg.distributed_type)) in {"MULTI_GPU", "FSDP", "DEEPSPEED"}


def test_a_bare_on_or_off_means_the_word(tmp_path):
    assert load_config(None, ["data.thinking=off"]).data.thinking == "off"
    assert load_config(None, ["data.thinking=on"]).data.thinking == "on"
    f = tmp_path / "c.yaml"
    f.write_text("data:\n  thinking: off\n")
    assert load_config(f, []).data.thinking == "off"
