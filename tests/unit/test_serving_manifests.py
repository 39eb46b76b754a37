"""deployments/serving/: the Kubernetes manifests are well-formed and agree with each other and
with the server (ports, probe paths, secret keys, flags)."""

from pathlib import Path

import pytest
import yaml

SERVING = Path(__file__).resolve().parents[2] / "deployments" / "serving"


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict]:
    documents = list(yaml.safe_load_all((SERVING / "transferflow-serve.yaml").read_text()))
    return {document["kind"]: document for document in documents}


@pytest.fixture(scope="module")
def container(manifests) -> dict:
    [container] = manifests["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_the_deployment_runs_serve_on_its_container_port_beyond_loopback(container):
    from transferflow.cli import build_parser

    args = container["args"]
    parsed = build_parser().parse_args(container["command"][1:] + args)  # every flag exists
    assert parsed.command == "serve" and "@" in parsed.reference  # follows an alias
    [port] = container["ports"]
    assert int(flag(args, "--port")) == port["containerPort"] and flag(args, "--host") == "0.0.0.0"


def test_probes_hit_the_open_health_endpoints(container):
    from transferflow.serving.middleware import OPEN_PATHS

    port_name = container["ports"][0]["name"]
    probes = {"readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    for probe, path in probes.items():
        assert container[probe]["httpGet"] == {"path": path, "port": port_name}
    assert set(probes.values()) <= OPEN_PATHS  # a kubelet sends no token


def test_the_service_selects_the_pods_and_targets_the_container_port(manifests, container):
    deployment, service = manifests["Deployment"], manifests["Service"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    [port] = service["spec"]["ports"]
    assert port["targetPort"] in (container["ports"][0]["name"], container["ports"][0]["containerPort"])


def test_s3_settings_and_the_token_come_from_the_example_secret(container):
    from transferflow.cli.serve import TOKEN_VARIABLE

    secret = yaml.safe_load((SERVING / "secret.example.yaml").read_text())
    references = {entry["name"]: entry["valueFrom"]["secretKeyRef"] for entry in container["env"]
                  if "valueFrom" in entry}
    required = {TOKEN_VARIABLE, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "TRANSFERFLOW_BUCKET"}
    assert required <= set(references)
    for variable, reference in references.items():
        assert reference["name"] == secret["metadata"]["name"], variable
        assert reference["key"] in secret["stringData"], variable
    plain = {entry["name"] for entry in container["env"] if "value" in entry}
    assert not plain & {TOKEN_VARIABLE, "AWS_SECRET_ACCESS_KEY"}, "secrets must not be plain values"


def test_the_container_requests_resources_and_runs_unprivileged(manifests, container):
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert manifests["Deployment"]["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
