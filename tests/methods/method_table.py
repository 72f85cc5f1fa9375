"""The method × architecture table of docs/methods.md: trainable parameters as a share of all parameters.

    python -m tests.methods.method_table            # tiny test models + the bundled SmolLM2 (no training)

Counts come from applying each method for real (`apply_method` + `count_parameters`), not from formulas.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import torch

from tests.tiny_models import TINY_ARCHS, build_tiny_model
from thinktune.config import MethodConfig
from thinktune.data.render import TokenizedSample
from thinktune.errors import ConfigError
from thinktune.methods import MethodContext, apply_method, count_parameters

ROWS: list[tuple[str, dict]] = [
    ("lora (r=16, default targets)", {"name": "lora"}),
    ("lora + DoRA", {"name": "lora", "use_dora": True}),
    ("lora + expert_lora (MoE)", {"name": "lora", "expert_lora": True, "dropout": 0.0}),
    ("qlora (r=16)", {"name": "lora"}),  # same adapter as LoRA; the base is 4-bit
    ("adalora (r=16 → 8)", {"name": "adalora"}),
    ("ia3", {"name": "ia3"}),
    ("prompt_tuning (20 tokens)", {"name": "prompt_tuning"}),
    ("p_tuning (20 tokens)", {"name": "p_tuning"}),
    ("prefix_tuning (20 tokens)", {"name": "prefix_tuning"}),
    ("freeze top_layers=2", {"name": "freeze", "top_layers": 2}),
    ("freeze attention", {"name": "freeze", "trainable": "attention"}),
    ("freeze mlp", {"name": "freeze", "trainable": "mlp"}),
    ("full", {"name": "full"}),
    ("esft (p=0.2)", {"name": "esft"}),
]


def share(model_loader, fields: dict, vocab: int) -> str:
    samples = [TokenizedSample(list(range(3, 40)), list(range(3, 40))) for _ in range(4)]
    try:
        model = apply_method(model_loader(), MethodConfig(**fields), MethodContext(samples=samples, total_steps=100))
    except ConfigError:
        return "n/a"
    trainable, total = count_parameters(model)
    return f"{trainable / total:.2%}"


def main() -> None:
    from transformers import AutoModelForCausalLM

    from thinktune.models.loading import resolve_model

    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {arch: build_tiny_model(arch, Path(tmp) / arch) for arch in TINY_ARCHS}
        dirs["SmolLM2-135M"] = resolve_model("smollm2-135m-instruct").path
        models = {name: AutoModelForCausalLM.from_pretrained(d) for name, d in dirs.items()}
        states = {name: {k: v.clone() for k, v in m.state_dict().items()} for name, m in models.items()}

        def loader(name):
            def load():
                m = AutoModelForCausalLM.from_config(models[name].config)
                m.load_state_dict(states[name])
                return m

            return load

        print("| method | " + " | ".join(dirs) + " |")
        print("|---|" + "---:|" * len(dirs))
        for label, fields in ROWS:
            cells = [share(loader(name), fields, 0) for name in dirs]
            print(f"| {label} | " + " | ".join(cells) + " |", flush=True)
        for name, m in models.items():
            print(f"{name}: {sum(p.numel() for p in m.parameters()):,} parameters")


if __name__ == "__main__":
    main()
