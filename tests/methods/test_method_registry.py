"""The methods registry and the checks that run before any weights load."""

from __future__ import annotations

import typing

import pytest
import torch

from thinktune.config import MethodConfig
from thinktune.errors import ConfigError, EnvironmentProblem
from thinktune.methods import METHODS, apply_method, check_method_environment, method_loss, optimizer_parameters


def test_every_configurable_method_is_registered():
    names = typing.get_args(MethodConfig.model_fields["name"].annotation)
    assert set(names) == set(METHODS)


def test_unknown_method_is_a_config_error():
    cfg = MethodConfig.model_construct(**{**MethodConfig().model_dump(), "name": "magic"})
    with pytest.raises(ConfigError, match="'magic' is not available"):
        check_method_environment(cfg)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "lora", "expert_lora": True, "dropout": 0.05}, "needs method.dropout=0"),
        ({"name": "lora", "progressive_unfreeze_step": 3}, "applies to method.name freeze or full"),
        ({"name": "ia3", "expert_lora": True, "dropout": 0.0}, "expert_lora applies to method.name lora"),
        ({"name": "prompt_tuning", "train_router": True}, "soft prompts leave the model frozen"),
        ({"name": "freeze", "trainable": "regex"}, "needs method.trainable_regex"),
        ({"name": "freeze", "trainable": "regex", "trainable_regex": "("}, "invalid regular expression"),
        ({"name": "freeze", "trainable": "mlp", "progressive_unfreeze_step": 2}, "trainable=mlp has none"),
    ],
)
def test_config_problems_fail_before_loading(fields, message):
    with pytest.raises(ConfigError, match=message):
        check_method_environment(MethodConfig(**fields))


class Untouchable:
    """A stand-in model: any use of it fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"the model was used ({name}) before the environment check")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_qlora_without_cuda_is_one_line_environment_problem():
    cfg = MethodConfig(name="qlora")
    with pytest.raises(EnvironmentProblem) as e:
        check_method_environment(cfg)
    assert "CUDA" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(EnvironmentProblem):
        apply_method(Untouchable(), cfg)


def test_qlora_quantization_is_nf4_double_quant():
    from thinktune.methods.qlora import quantization_config

    q = quantization_config(MethodConfig(name="qlora"))
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant


def test_defaults_for_methods_without_hooks():
    model = torch.nn.Linear(2, 2)
    model.weight.requires_grad_(False)
    cfg = MethodConfig(name="lora")
    assert [n for n, _ in optimizer_parameters(model, cfg)] == ["bias"]
    assert method_loss(model, cfg) is None


def test_esft_with_weight_decay_fails_before_loading():
    from thinktune.config import TrainConfig

    with pytest.raises(ConfigError, match="train.weight_decay=0"):
        check_method_environment(MethodConfig(name="esft"), TrainConfig(weight_decay=0.01))
    check_method_environment(MethodConfig(name="esft"), TrainConfig(weight_decay=0.0))
