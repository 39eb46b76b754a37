"""deployments/ files: every template placeholder is a declared variable, defaults are sane."""

import json
import re
from pathlib import Path

import pytest

POOLS = Path(__file__).resolve().parents[2] / "deployments" / "pools"


def placeholders(node) -> set[str]:
    text = json.dumps(node)
    return set(re.findall(r"\{\{\s*([a-z_]+)\s*\}\}", text))


@pytest.mark.parametrize("template", sorted(p.name for p in POOLS.glob("*.json")))
def test_every_placeholder_is_a_declared_variable(template):
    document = json.loads((POOLS / template).read_text())
    declared = set(document["variables"]["properties"])
    assert placeholders(document["job_configuration"]) <= declared


def test_gpu_pools_pin_and_request_gpus():
    process = json.loads((POOLS / "gpu-process.json").read_text())
    assert process["variables"]["properties"]["env"]["default"]["CUDA_VISIBLE_DEVICES"] == "0"
    k8s = json.loads((POOLS / "gpu-kubernetes.json").read_text())
    container = k8s["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"
    pod = k8s["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == "{{ node_selector }}" and pod["tolerations"] == "{{ tolerations }}"


def test_learning_curve_is_a_png_of_the_expected_size():
    import struct

    from transferflow.reporting.charts import HEIGHT, WIDTH, learning_curve_png

    png = learning_curve_png([{"accuracy": [0.5, 0.7], "val_accuracy": [0.4, 0.6],
                               "loss": [1.0, 0.5], "val_loss": [1.1, float("nan")]}])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (2 * WIDTH, HEIGHT)


def test_retraining_on_drift_is_off_by_default_and_its_parameters_make_a_config():
    import jinja2
    import yaml

    from transferflow.config import RetrainConfig

    document = yaml.safe_load((POOLS.parent / "prefect.yaml").read_text())
    by_name = {(d["entrypoint"].split(":")[-1], d["name"]): d for d in document["deployments"]}
    [trigger] = by_name[("retrain", "on-drift")]["triggers"]
    assert trigger["enabled"] is False and trigger["expect"] == ["transferflow.model.drift"]
    assert by_name[("monitor", "scheduled")]["schedules"][0]["cron"] == "5 * * * *"
    for feedback in ("s3://b/feedback/flowers/labeled/", ""):  # "" when nothing is labelled yet
        payload = {"name": "flowers", "dataset": "s3://b/flowers/", "labeled_feedback": feedback}
        rendered = {key: jinja2.Template(value).render(event={"payload": payload})
                    for key, value in trigger["parameters"]["config"].items()}
        config = RetrainConfig(**rendered)
        assert (config.registry_name, config.dataset) == ("flowers", "s3://b/flowers/")
        assert config.extra_data == (feedback or None)
