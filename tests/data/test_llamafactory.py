"""LLaMA-Factory data folders: `data.dataset_dir` + dataset names, read with each entry's formatting, columns, tags,
ranking and num_samples. The fixture rows are records of LLaMA-Factory's own demo files, in their shapes."""

from __future__ import annotations

import json
import math

import pytest
from rich.console import Console
from typer.testing import CliRunner

from thinktune.cli import app
from thinktune.config import DataConfig, load_config, to_yaml
from thinktune.data.dataset_info import parse_reference
from thinktune.data.reading import read_records, resolve_path
from thinktune.data.spec import as_spec
from thinktune.errors import DataError

ALPACA = [
    {"instruction": "Calculate 15% of 500.", "input": "", "output": "15% of 500 is 75."},
    {"instruction": "Sum up the numbers.", "input": "3, 2, 5", "output": "The sum of the numbers is 10."},
    {"instruction": "Generate a hypothetical phone number.", "input": "", "output": "(555) 123-4567"},
]
AGE_TOOL = (
    '[{"name": "calculate_age", "description": "Calculate the age based on birthdate", "parameters": {"type": '
    '"object", "properties": {"birthdate": {"type": "string", "description": "The birthdate in YYYY-MM-DD format"}}, '
    '"required": ["birthdate"]}}]'
)
GLAIVE = [
    {
        "conversations": [
            {"from": "human", "value": "Hi, I was born on 1990-05-15. Can you tell me how old I am today?"},
            {"from": "function_call", "value": '{"name": "calculate_age", "arguments": {"birthdate": "1990-05-15"}}'},
            {"from": "observation", "value": '{"age": 31}'},
            {"from": "gpt", "value": "Based on the birthdate you provided, you are 31 years old today."},
        ],
        "tools": AGE_TOOL,
    },
    {
        "conversations": [
            {"from": "human", "value": "Can you help me book a flight to New York?"},
            {
                "from": "gpt",
                "value": "I'm sorry, but I don't have the capability to book flights. My current function allows me "
                "to generate QR codes for a given text or URL. Is there anything else I can assist you with?",
            },
        ],
        "tools": '[{"name": "generate_qr_code", "description": "Generate a QR code for a given text or URL", '
        '"parameters": {"type": "object", "properties": {"data": {"type": "string", "description": "The text or '
        'URL to encode"}}, "required": ["data"]}}]',
    },
]
DPO = [
    {
        "conversations": [
            {
                "from": "human",
                "value": "Obtain the result by calculating 6778576-84834150134. Only respond with math and no words.",
            }
        ],
        "chosen": {"from": "gpt", "value": "6778576 - 84834150134 = -84827371558"},
        "rejected": {"from": "gpt", "value": "84834150134 - 6778576 = -16666579378"},
    },
    {
        "conversations": [
            {
                "from": "human",
                "value": "answer 256626720691 + 1646615806005?\nLimit your response to mathematical expressions and "
                "symbols.",
            }
        ],
        "chosen": {"from": "gpt", "value": "256626720691 + 1646615806005 = 1903242526696"},
        "rejected": {
            "from": "gpt",
            "value": "To find the sum of 256626720691 and 1646615806005, you can use the following mathematical "
            "expression:\n\n256626720691 + 1646615806005 =\n\nThe result is:\n\n4212883012996",
        },
    },
]
KTO = [
    {
        "messages": [
            {"content": "What is the result of 660-549695? Only respond with math and no words.", "role": "user"},
            {"content": "660 - 549695 = -549035", "role": "assistant"},
        ],
        "label": True,
    },
    {
        "messages": [
            {
                "content": "Could you work out 2930861750638 plus 52341951985411 for me? Only respond with math and "
                "no words.",
                "role": "user",
            },
            {"content": "71600583078871", "role": "assistant"},
        ],
        "label": False,
    },
    {
        "messages": [
            {"content": "what does this mean\n\n超次元の \n究極バトル!!", "role": "user"},
            {
                "content": 'This is a japanese idiom that roughly translated to "Extreme Battle!!!" It is used to '
                "emphasize a certain situation or action.",
                "role": "assistant",
            },
        ],
        "label": True,
    },
]
# A dataset of one's own with a column mapping and tags (LLaMA-Factory's README: "sharegpt" with custom tags).
CUSTOM = [
    {
        "turns": [
            {"speaker": "Q", "text": "What is 2 + 2? Use the calculator."},
            {"speaker": "CALL", "text": '{"name": "add", "arguments": {"a": 2, "b": 2}}'},
            {"speaker": "RESULT", "text": "4"},
            {"speaker": "A", "text": "2 + 2 = 4."},
        ],
        "sys": "You add numbers.",
        "fns": [{"name": "add", "parameters": {"type": "object"}}],
        "id": 7,
    }
]
INFO = {
    "identity": {"file_name": "identity.json"},
    "alpaca_en_demo": {"file_name": "alpaca_en_demo.json"},
    "glaive_toolcall_en_demo": {
        "file_name": "glaive_toolcall_en_demo.json",
        "formatting": "sharegpt",
        "columns": {"messages": "conversations", "tools": "tools"},
    },
    "dpo_en_demo": {
        "file_name": "dpo_en_demo.json",
        "ranking": True,
        "formatting": "sharegpt",
        "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"},
    },
    "kto_en_demo": {
        "file_name": "kto_en_demo.json",
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "kto_tag": "label"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
    },
    "custom_tools": {
        "file_name": "custom.jsonl",
        "formatting": "sharegpt",
        "columns": {"messages": "turns", "system": "sys", "tools": "fns"},
        "tags": {
            "role_tag": "speaker",
            "content_tag": "text",
            "user_tag": "Q",
            "assistant_tag": "A",
            "observation_tag": "RESULT",
            "function_tag": "CALL",
        },
    },
    "alpaca_en": {
        "hf_hub_url": "llamafactory/alpaca_en",
        "ms_hub_url": "llamafactory/alpaca_en",
        "om_hub_url": "HaM/alpaca_en",
    },
    "mllm_demo": {
        "file_name": "mllm_demo.json",
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
    },
}


@pytest.fixture
def data_dir(tmp_path):
    """A LLaMA-Factory `data/` folder: dataset_info.json and the files its entries name."""
    d = tmp_path / "data"
    d.mkdir()
    (d / "dataset_info.json").write_text(json.dumps(INFO, indent=2))
    for name, rows in (
        ("alpaca_en_demo.json", ALPACA),
        ("identity.json", ALPACA[:2]),
        ("glaive_toolcall_en_demo.json", GLAIVE),
        ("dpo_en_demo.json", DPO),
        ("kto_en_demo.json", KTO),
    ):
        (d / name).write_text(json.dumps(rows, indent=2, ensure_ascii=False))
    (d / "custom.jsonl").write_text("".join(json.dumps(r) + "\n" for r in CUSTOM))
    (d / "mllm_demo.json").write_text("[]")
    return d


def add_entry(data_dir, name, entry):
    info = json.loads((data_dir / "dataset_info.json").read_text())
    (data_dir / "dataset_info.json").write_text(json.dumps({**info, name: entry}))


def ref(data_dir, name: str) -> str:
    return f"{(data_dir / 'dataset_info.json').as_posix()}#{name}"


def msg(role, content, reasoning=None, **extra):
    return {"role": role, "content": content, "reasoning": reasoning, **extra}


# ---- names in the config ----


def test_names_resolve_to_references(data_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    own = tmp_path / "own.jsonl"
    own.write_text(json.dumps(ALPACA[0]) + "\n")
    cfg = DataConfig(
        dataset_dir="data",
        train=["alpaca_en_demo", "glaive_toolcall_en_demo[:1]", "own.jsonl", "bundled:arithmetic/train"],
        test="identity",
        validation="identity[-1:]",
    )
    assert cfg.train == [
        "data/dataset_info.json#alpaca_en_demo",
        "data/dataset_info.json#glaive_toolcall_en_demo[:1]",
        "own.jsonl",
        "bundled:arithmetic/train",
    ]
    assert (cfg.test, cfg.validation) == ("data/dataset_info.json#identity", "data/dataset_info.json#identity[-1:]")
    assert parse_reference(cfg.train[1]) == (
        data_dir.relative_to(tmp_path) / "dataset_info.json",
        "glaive_toolcall_en_demo",
    )
    assert len(read_records(cfg.train[1]).records) == 1
    assert [r["messages"][-1]["content"] for r in read_records(cfg.validation).records] == [ALPACA[1]["output"]]
    spec = DataConfig(dataset_dir="data", train=[{"path": "alpaca_en_demo", "weight": 2}]).train[0]
    assert spec.path == "data/dataset_info.json#alpaca_en_demo" and spec.weight == 2


def test_a_run_config_names_datasets_and_its_config_yaml_reads_back(data_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["data.dataset_dir=data", "data.train=[alpaca_en_demo, glaive_toolcall_en_demo]"])
    (tmp_path / "config.yaml").write_text(to_yaml(cfg))
    again = load_config(tmp_path / "config.yaml")
    assert (
        again.data.train
        == cfg.data.train
        == [ref(data_dir.relative_to(tmp_path), n) for n in ("alpaca_en_demo", "glaive_toolcall_en_demo")]
    )


def test_spec_of_a_reference_carries_the_entry_mapping(data_dir):
    """prepare.py names its cache entry after the spec: the entry's columns must be part of it."""
    spec = as_spec(ref(data_dir, "glaive_toolcall_en_demo"))
    assert spec.columns.messages == "conversations" and spec.columns.tools == "tools"
    assert resolve_path(spec.path) == data_dir / "glaive_toolcall_en_demo.json"


def test_unknown_name_is_one_data_error_listing_the_names(data_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as e:
        DataConfig(dataset_dir="data", train=["alpaca_en_dem"])
    text = str(e.value)
    assert "\n" not in text and text.startswith("data.train: data/dataset_info.json: no dataset 'alpaca_en_dem'")
    assert "did you mean 'alpaca_en_demo'?" in text
    assert "alpaca_en_demo, custom_tools, dpo_en_demo, glaive_toolcall_en_demo, identity, kto_en_demo" in text
    with pytest.raises(DataError, match="data.test: data/dataset_info.json: no dataset 'nope'"):
        DataConfig(dataset_dir="data", test="nope")
    with pytest.raises(DataError, match=r"missing/dataset_info.json: not found \(data.dataset_dir must be a folder"):
        DataConfig(dataset_dir="missing", train=["alpaca_en_demo"])


# ---- entries read with their formatting, columns, tags ----


def test_alpaca_entry_reads_as_conversations(data_dir):
    loaded = read_records(ref(data_dir, "alpaca_en_demo"))
    assert loaded.rejects == [] and len(loaded.records) == 3
    assert loaded.records[1]["messages"] == [
        msg("user", "Sum up the numbers.\n\n3, 2, 5"),
        msg("assistant", "The sum of the numbers is 10."),
    ]
    assert loaded.records[1]["meta"]["source"] == str(data_dir / "alpaca_en_demo.json")


def test_glaive_tool_call_record_becomes_tool_calls_tool_message_and_tools(data_dir):
    loaded = read_records(ref(data_dir, "glaive_toolcall_en_demo"))
    assert loaded.rejects == []
    rec = loaded.records[0]
    assert rec["messages"] == [
        msg("user", "Hi, I was born on 1990-05-15. Can you tell me how old I am today?"),
        msg("assistant", "", tool_calls=[{"name": "calculate_age", "arguments": {"birthdate": "1990-05-15"}}]),
        msg("tool", '{"age": 31}'),
        msg("assistant", "Based on the birthdate you provided, you are 31 years old today."),
    ]
    assert rec["tools"] == [{"type": "function", "function": json.loads(AGE_TOOL)[0]}]
    assert "tools" not in rec["meta"] and "conversations" not in rec["meta"]


def test_columns_and_tags_of_ones_own_entry(data_dir):
    [rec] = read_records(ref(data_dir, "custom_tools")).records
    assert rec["messages"] == [
        msg("system", "You add numbers."),
        msg("user", "What is 2 + 2? Use the calculator."),
        msg("assistant", "", tool_calls=[{"name": "add", "arguments": {"a": 2, "b": 2}}]),
        msg("tool", "4"),
        msg("assistant", "2 + 2 = 4."),
    ]
    assert rec["tools"][0]["function"]["name"] == "add" and rec["meta"]["id"] == 7


def test_alpaca_history_and_listed_columns(data_dir):
    """An entry that lists its columns has exactly those (no default `input`), as in LLaMA-Factory."""
    rows = [{"q": "And 3 + 3?", "input": "ignored", "a": "6", "hist": [["2 + 2?", "4"]], "sys": "Be brief."}]
    (data_dir / "hist.json").write_text(json.dumps(rows))
    add_entry(
        data_dir,
        "with_history",
        {"file_name": "hist.json", "columns": {"prompt": "q", "response": "a", "history": "hist", "system": "sys"}},
    )
    [rec] = read_records(ref(data_dir, "with_history")).records
    assert rec["messages"] == [
        msg("system", "Be brief."),
        msg("user", "2 + 2?"),
        msg("assistant", "4"),
        msg("user", "And 3 + 3?"),
        msg("assistant", "6"),
    ]
    assert rec["meta"]["input"] == "ignored"


def test_ranking_entry_reads_as_preference_pairs(data_dir):
    loaded = read_records(ref(data_dir, "dpo_en_demo"), kind="preference")
    assert loaded.rejects == [] and len(loaded.records) == 2
    rec = loaded.records[0]
    assert rec["prompt"] == [msg("user", DPO[0]["conversations"][0]["value"])]
    assert rec["chosen"] == msg("assistant", "6778576 - 84834150134 = -84827371558")
    assert rec["rejected"] == msg("assistant", "84834150134 - 6778576 = -16666579378")


def test_kto_entry_reads_labelled_answers(data_dir):
    loaded = read_records(ref(data_dir, "kto_en_demo"), kind="kto")
    assert loaded.rejects == []
    assert [r["meta"]["kto_label"] for r in loaded.records] == [True, False, True]
    assert loaded.records[1]["messages"][-1] == msg("assistant", "71600583078871")
    assert "label" not in loaded.records[0]["meta"]


@pytest.mark.parametrize(
    ("name", "kind", "reason"),
    [
        (
            "dpo_en_demo",
            "sft",
            "dpo_en_demo: a ranking dataset (ranking: true) holds preference pairs, not conversations",
        ),
        ("dpo_en_demo", "task", "dpo_en_demo: a ranking dataset (ranking: true) holds preference pairs, not tasks"),
        (
            "kto_en_demo",
            "sft",
            "kto_en_demo: a KTO dataset (single answers labelled by column 'label'), not conversations",
        ),
        ("kto_en_demo", "preference", "train on it with `thinktune dpo --loss kto`"),
        ("alpaca_en_demo", "preference", "alpaca_en_demo: not a ranking dataset (no ranking: true)"),
        ("alpaca_en_demo", "kto", "alpaca_en_demo: not a KTO dataset"),
    ],
)
def test_an_entry_read_as_another_kind_is_refused(data_dir, name, kind, reason):
    with pytest.raises(DataError) as e:
        read_records(ref(data_dir, name), kind=kind)
    assert reason in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        (None, "alpaca_en: hf_hub_url 'llamafactory/alpaca_en': thinktune reads local files only"),
        ({"script_url": "my_script"}, "script_url 'my_script': thinktune reads local files only"),
        ({"file_name": "mllm_video_demo.json", "columns": {"videos": "videos"}}, "columns.videos: videos are not read"),
        ({"file_name": "nowhere.json"}, "file_name {dir}/nowhere.json: not found"),
        ({"file_name": "wiki_demo.txt"}, "file_name {dir}/wiki_demo.txt: .txt files are not supported"),
        ({"file_name": "alpaca_en_demo.json", "split": "validation"}, "split 'validation': a local file has only"),
        ({"file_name": "alpaca_en_demo.json", "num_samples": 0}, "num_samples: must be a positive whole number"),
        ({"file_name": "alpaca_en_demo.json", "formatting": "chatml"}, "formatting 'chatml': expected one of alpaca"),
        ({"file_name": "alpaca_en_demo.json", "ranking": "yes"}, "ranking: must be true or false, got 'yes'"),
        ({"columns": {"prompt": "q"}}, "file_name: missing"),
        ({"file_name": "a.json", "columns": {"prompt": 5}}, "columns.prompt: Input should be a valid string (got 5)"),
    ],
)
def test_entries_thinktune_cannot_read_are_one_line(data_dir, entry, reason):
    (data_dir / "wiki_demo.txt").write_text("text\n")
    (data_dir / "a.json").write_text("[]")
    name = "alpaca_en" if entry is None else "entry"
    if entry is not None:
        add_entry(data_dir, name, entry)
    with pytest.raises(DataError) as e:
        DataConfig(dataset_dir=str(data_dir), train=[name])
    text = str(e.value)
    assert "\n" not in text and f"dataset_info.json: {name}: " in text
    assert reason.format(dir=data_dir) in text, text


def test_a_bad_record_is_a_reject_naming_file_and_line(data_dir):
    bad = {"conversations": [{"from": "human", "value": "hi"}, {"from": "robot", "value": "beep"}]}
    (data_dir / "glaive_toolcall_en_demo.json").write_text(f"[\n{json.dumps(GLAIVE[0])},\n{json.dumps(bad)}\n]\n")
    loaded = read_records(ref(data_dir, "glaive_toolcall_en_demo"))
    assert len(loaded.records) == 1
    [r] = loaded.rejects
    assert (r.file, r.line) == (str(data_dir / "glaive_toolcall_en_demo.json"), 3)
    assert r.reason.startswith("column 'conversations'[1]: unknown role 'robot' (expected one of user, human,")


def test_a_folder_file_name_reads_every_file(data_dir):
    (data_dir / "parts").mkdir()
    (data_dir / "parts" / "a.jsonl").write_text(json.dumps(ALPACA[0]) + "\n{bad\n")
    (data_dir / "parts" / "b.jsonl").write_text(json.dumps(ALPACA[1]) + "\n")
    add_entry(data_dir, "parts", {"file_name": "parts"})
    loaded = read_records(ref(data_dir, "parts"))
    assert [r["meta"]["source"] for r in loaded.records] == [
        str(data_dir / "parts" / n) for n in ("a.jsonl", "b.jsonl")
    ]
    assert [(r.file, r.line) for r in loaded.rejects] == [(str(data_dir / "parts" / "a.jsonl"), 2)]


def test_num_samples_draws_rows_and_repeats_only_after_using_all(data_dir):
    add_entry(data_dir, "five", {"file_name": "alpaca_en_demo.json", "num_samples": 5})
    add_entry(data_dir, "two", {"file_name": "alpaca_en_demo.json", "num_samples": 2})
    five = [r["meta"]["line"] for r in read_records(ref(data_dir, "five")).records]
    assert len(five) == 5 and len(set(five)) == 3
    two = [r["meta"]["line"] for r in read_records(ref(data_dir, "two")).records]
    assert len(two) == len(set(two)) == 2
    assert two == [r["meta"]["line"] for r in read_records(ref(data_dir, "two")).records]  # seeded
    assert as_spec(ref(data_dir, "two")).num_samples == 2


def test_a_data_folder_given_as_a_file_says_how_to_use_it(data_dir):
    with pytest.raises(DataError, match="a LLaMA-Factory data folder .*: set data.dataset_dir"):
        read_records(str(data_dir))


# ---- `thinktune data` ----

runner = CliRunner()


def cli(*args: str):
    return runner.invoke(app, ["data", *map(str, args)], env={"COLUMNS": "200", "NO_COLOR": "1"})


def test_cli_validate_names_of_a_dataset_dir(data_dir):
    r = cli("validate", "--dataset-dir", data_dir, "glaive_toolcall_en_demo", "alpaca_en_demo")
    assert r.exit_code == 0, r.output
    assert "glaive_toolcall_en_demo: 2 usable, 0 rejected" in r.output
    assert "alpaca_en_demo: 3 usable, 0 rejected" in r.output
    assert cli("validate", "--dataset-dir", data_dir, "dpo_en_demo", "--kind", "preference").exit_code == 0
    assert cli("validate", "--dataset-dir", data_dir, "kto_en_demo", "--kind", "kto").exit_code == 0


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["nope"], "no dataset 'nope' (local datasets: alpaca_en_demo"),
        (["kto_en_demo"], "kto_en_demo: a KTO dataset"),
        (["alpaca_en"], "alpaca_en: hf_hub_url"),
    ],
)
def test_cli_errors_are_one_line(data_dir, args, fragment):
    r = cli("validate", "--dataset-dir", data_dir, *args)
    assert r.exit_code == 2, r.output
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], r.output


def test_cli_stats_of_a_named_dataset(data_dir, tiny_model_dirs):
    r = cli(
        "stats", "--dataset-dir", data_dir, "glaive_toolcall_en_demo", "--model", tiny_model_dirs["llama"], "--no-png"
    )
    assert r.exit_code == 0, r.output
    assert "2 records, 0 rejected" in r.output and "tool" in r.output


# ---- `thinktune dpo` on ranking and KTO entries ----


def dpo_cfg(model_dir, out, data_dir):
    return load_config(
        None,
        [
            f"model.name_or_path={model_dir}",
            f"output_dir={out}",
            f"data.dataset_dir={data_dir}",
            "data.train=[dpo_en_demo]",
            "train.max_steps=2",
            "train.batch_size=2",
            "train.report_to=[]",
            "eval.before=false",
            "eval.after=false",
        ],
    )


def test_dpo_trains_on_a_ranking_entry_and_kto_on_a_kto_entry(tiny_model_dirs, data_dir, tmp_path):
    from thinktune.train.dpo import DPOConfig, run_dpo

    cfg = dpo_cfg(tiny_model_dirs["llama"], tmp_path / "dpo", data_dir)
    summary = run_dpo(cfg.model_copy(update={"dpo": DPOConfig(loss="dpo")}), None, None, Console(quiet=True))
    assert summary["pairs"] == 2 and summary["steps"] == 2
    cfg = dpo_cfg(tiny_model_dirs["llama"], tmp_path / "kto", data_dir)
    summary = run_dpo(cfg.model_copy(update={"dpo": DPOConfig(loss="kto")}), ["kto_en_demo"], None, Console(quiet=True))
    # 2 desirable and 1 undesirable answers: zipped into 2 rows, the undesirable one used twice
    assert summary["pairs"] == 2 and summary["steps"] == 2
    rows = [json.loads(x) for x in (tmp_path / "kto" / "metrics.jsonl").read_text().splitlines()]
    assert "kl" in rows[0] and all(math.isfinite(r["loss"]) for r in rows)


def test_dpo_refuses_a_kto_entry_without_the_kto_loss_before_loading_a_model(data_dir, tmp_path):
    from thinktune.train.dpo import DPOConfig, run_dpo

    cfg = dpo_cfg("no-such-model", tmp_path / "run", data_dir)
    with pytest.raises(DataError, match="kto_en_demo: a KTO dataset .* not preference pairs"):
        run_dpo(cfg.model_copy(update={"dpo": DPOConfig(loss="dpo")}), ["kto_en_demo"], None, Console(quiet=True))
    with pytest.raises(DataError, match="alpaca_en_demo: not a ranking dataset"):
        run_dpo(cfg.model_copy(update={"dpo": DPOConfig(loss="dpo")}), ["alpaca_en_demo"], None, Console(quiet=True))


def test_an_image_entry_reads_its_images_relative_to_its_file(data_dir):
    from PIL import Image

    (data_dir / "mllm_demo_data").mkdir()
    Image.new("RGB", (20, 20), (0, 90, 0)).save(data_dir / "mllm_demo_data" / "1.jpg")
    rows = [
        {"messages": [{"role": "user", "content": "<image>Who?"}, {"role": "assistant", "content": "Players."}],
         "images": ["mllm_demo_data/1.jpg"]},
        {"messages": [{"role": "user", "content": "<image>Again?"}, {"role": "assistant", "content": "No."}],
         "images": ["mllm_demo_data/2.jpg"]},
    ]  # fmt: skip
    (data_dir / "mllm_demo.json").write_text(json.dumps(rows))
    tags = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}
    entry = {
        "file_name": "mllm_demo.json",
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
    }
    add_entry(data_dir, "mllm_demo", {**entry, "tags": tags})
    loaded = read_records(ref(data_dir, "mllm_demo"))
    [rec] = loaded.records
    assert rec["images"] == [str((data_dir / "mllm_demo_data" / "1.jpg").resolve())]
    assert rec["messages"][0]["content"] == "<image>Who?" and "images" not in rec["meta"]
    [bad] = loaded.rejects
    assert "file not found" in bad.reason and "2.jpg" in bad.reason
    tasks = read_records(ref(data_dir, "mllm_demo"), kind="task")  # no answer column either: every row a reject
    assert not tasks.records and all("images are read in SFT conversations only" in r.reason for r in tasks.rejects)
