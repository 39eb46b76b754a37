"""Precision, XLA and strategy are chosen from the hardware found, and can be switched off."""

import pytest

from transferflow.config import RetrainConfig
from transferflow.training.compute import Accelerator, plan_compute

A100 = Accelerator("NVIDIA A100", (8, 0))
T4 = Accelerator("Tesla T4", (7, 5))
K80 = Accelerator("Tesla K80", (3, 7))


def test_a_cpu_worker_trains_in_float32_without_xla_on_one_device():
    plan = plan_compute(mixed_precision=True, xla=True, strategy="auto", gpus=[])
    assert (plan.precision, plan.jit_compile, plan.strategy, plan.replicas) == ("float32", False, "none", 1)
    assert "no GPU" in plan.describe(32)


@pytest.mark.parametrize(("gpu", "policy"), [(A100, "mixed_bfloat16"), (T4, "mixed_float16"),
                                              (K80, "float32")])
def test_mixed_precision_follows_the_gpus_tensor_cores(gpu, policy):
    plan = plan_compute(mixed_precision=True, xla=True, strategy="auto", gpus=[gpu])
    assert plan.precision == policy
    assert plan.jit_compile is True


def test_the_oldest_gpu_decides_the_precision():
    assert plan_compute(True, True, "auto", gpus=[A100, T4]).precision == "mixed_float16"


def test_flags_switch_mixed_precision_and_xla_off_on_a_gpu():
    plan = plan_compute(mixed_precision=False, xla=False, strategy="auto", gpus=[A100])
    assert (plan.precision, plan.jit_compile) == ("float32", False)
    assert "mixed precision switched off" in plan.reasons and "XLA switched off" in plan.reasons


def test_several_gpus_mirror_and_scale_the_batch():
    plan = plan_compute(True, True, "auto", gpus=[A100] * 4)
    assert (plan.strategy, plan.replicas) == ("mirrored", 4)
    assert plan.global_batch(32) == 128
    assert "batch 128 = 32 per replica" in plan.describe(32)
    assert plan_compute(True, True, "none", gpus=[A100] * 4).replicas == 1


def test_mirrored_can_be_forced_on_a_cpu():
    plan = plan_compute(True, True, "mirrored", gpus=[])
    assert (plan.strategy, plan.replicas) == ("mirrored", 1)


def test_the_config_refuses_an_unknown_strategy():
    with pytest.raises(ValueError, match="strategy"):
        RetrainConfig(strategy="horovod")
