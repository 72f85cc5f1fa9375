"""Live servers for the serving tests: uvicorn on 127.0.0.1 and a free port, in a background thread, stopped after.

`start_server(**serve_keys)` serves the tiny random Qwen3 (+ a LoRA adapter named `tiny-lora`); `scripted_server`
serves a stand-in model that always writes the same R1-style answer, so reasoning/content splitting can be checked
through the real engine, API and OpenAI client.
"""

from __future__ import annotations

import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, GenerationConfig

from tests.tiny_models import build_tiny_tokenizer
from thinktune.config import ServeConfig, to_yaml, validate
from thinktune.serve.adapters import ServedModel, load_served_model
from thinktune.serve.app import create_app
from thinktune.serve.server import BackgroundServer

ADAPTER = "tiny-lora"
SCRIPT = "<think>\nI add 2 and 3 to get 5.\n</think>\n\nThe answer is \\boxed{5}."


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models decode faster on one thread, and on a busy 2-core machine two threads thrash (~15x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_base(tiny_model_dirs) -> Path:
    return tiny_model_dirs["qwen3"]


@pytest.fixture(scope="session")
def tiny_adapter(tiny_base, tmp_path_factory) -> Path:
    """A LoRA adapter with random (not zero) B matrices, so it visibly changes the output."""
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    config = LoraConfig(r=8, lora_alpha=64, target_modules="all-linear", init_lora_weights=False)
    out = tmp_path_factory.mktemp("adapter") / ADAPTER
    get_peft_model(model, config).save_pretrained(out)
    return out


@pytest.fixture
def start_server(tiny_base, tiny_adapter):
    """Factory: start_server(max_queue=1, ...) → a running BackgroundServer; all are stopped after the test."""
    servers = []

    def start(api_key: str | None = None, adapters: bool = True, **serve) -> BackgroundServer:
        cfg = validate({"model": {"name_or_path": str(tiny_base)}, "serve": {"max_tokens_limit": 400, **serve}})
        served = load_served_model(cfg.model, {ADAPTER: str(tiny_adapter)} if adapters else {})
        server = BackgroundServer(create_app(served, cfg.serve, api_key), request_timeout=cfg.serve.request_timeout)
        servers.append(server.start())
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def tiny_server(tiny_base, tiny_adapter):
    """One shared server for the API tests: tiny Qwen3 + `tiny-lora`, max_tokens_limit 400."""
    cfg = validate({"model": {"name_or_path": str(tiny_base)}, "serve": {"max_tokens_limit": 400}})
    served = load_served_model(cfg.model, {ADAPTER: str(tiny_adapter)})
    with BackgroundServer(create_app(served, cfg.serve)) as server:
        server.base_name, server.adapter = str(tiny_base), ADAPTER
        yield server


class ScriptedModel(torch.nn.Module):
    """Stands in for a causal LM: every row 'generates' the tokens of `text`, then end-of-turn.

    It drives generate()'s hooks as transformers does — logits processors, then stopping criteria after each token
    — so the engine's per-row streaming and stopping run unchanged."""

    def __init__(self, tokenizer, text: str):
        super().__init__()
        self.script = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        self.vocab = len(tokenizer)
        self.config = type("Config", (), {"max_position_embeddings": 512})()
        self.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id)
        self.device = torch.device("cpu")
        self.active_adapter: str | None = None
        self.calls: list[tuple[str | None, int]] = []  # (adapter, rows) per generate()
        self.prompts: list[list[int]] = []  # each row's prompt ids (left padding included), per generate()
        self.steps = 0  # decoding steps run, over all calls
        self.step_seconds = 0.0  # pretend each step takes this long

    def set_adapter(self, name: str) -> None:
        self.active_adapter = name

    @contextmanager
    def disable_adapter(self):
        before, self.active_adapter = self.active_adapter, None
        yield
        self.active_adapter = before

    def generate(self, input_ids, max_new_tokens, logits_processor, stopping_criteria, pad_token_id, **kwargs):
        self.calls.append((self.active_adapter, input_ids.shape[0]))
        self.prompts += input_ids.tolist()
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool)
        for step in range(max_new_tokens):
            self.steps += 1
            time.sleep(self.step_seconds)
            token = self.script[min(step, len(self.script) - 1)]
            scores = torch.full((input_ids.shape[0], self.vocab), float("-inf"))
            scores[:, token] = 0.0
            chosen = logits_processor(input_ids, scores).argmax(-1)
            chosen = torch.where(done, torch.full_like(chosen, pad_token_id), chosen)
            input_ids = torch.cat([input_ids, chosen[:, None]], dim=-1)
            done |= stopping_criteria(input_ids, scores)
            if done.all():
                break
        return input_ids


# Like Qwen3's template: thinking off pre-fills an empty think block, so the prompt differs.
THINKING_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


def scripted(adapters: tuple[str, ...] = (), text: str = SCRIPT, template: str = THINKING_TEMPLATE) -> ServedModel:
    """A ServedModel over ScriptedModel writing `text` (adapter names are accepted, and only recorded)."""
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = template
    return ServedModel(ScriptedModel(tokenizer, text), tokenizer, "scripted", {a: Path(a) for a in adapters})


@pytest.fixture(scope="session")
def make_scripted():
    return scripted


@pytest.fixture(scope="module")
def scripted_server():
    served = scripted()
    with BackgroundServer(create_app(served, ServeConfig(max_tokens_limit=200))) as server:
        yield server


@pytest.fixture
def run_dir(tmp_path, tiny_base, tiny_adapter) -> Path:
    """A finished training run as `thinktune train` leaves it: config.yaml + adapter/."""
    cfg = validate({"name": "tiny-run", "model": {"name_or_path": str(tiny_base)}})
    run = tmp_path / "runs" / "tiny-run"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(to_yaml(cfg))
    shutil.copytree(tiny_adapter, run / "adapter")
    return run
