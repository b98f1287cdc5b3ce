"""The Kubernetes manifests: every object valid against the Kubernetes 1.37 schemas (strict: no
unknown field) and the ScaledObject against KEDA's CRD schema; the scaling numbers are the
policy's; the gateway's config parses; the committed examples are what the command renders now.
No cluster runs here: applying them, KEDA reading Prometheus and the HPA acting are not tested."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import kubernetes_validate
import promql_parser
import pytest
import yaml

from shipyard.config import ShipyardConfig
from shipyard.server.kubernetes import render, to_yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "kubernetes"
IMAGE = "ghcr.io/shipyard/shipyard:0.1.0"


@pytest.fixture(scope="module")
def config() -> ShipyardConfig:
    return ShipyardConfig.load(EXAMPLE / "shipyard.yaml")


@pytest.fixture(scope="module")
def keda_schemas() -> str:
    return subprocess.run([str(ROOT / "scripts" / "keda-schema.sh")], check=True, capture_output=True, text=True,
                          timeout=600).stdout.strip()


def by_kind(objects: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


@pytest.mark.parametrize("autoscaler", ["keda", "hpa"])
def test_every_object_is_valid(config, keda_schemas, autoscaler):
    objects = render(config, IMAGE, autoscaler)
    crds = [o for o in objects if o["apiVersion"].startswith("keda.sh/")]
    for obj in objects:
        if obj not in crds:
            kubernetes_validate.validate(obj, "1.37", strict=True)
    assert len(crds) == (2 if autoscaler == "keda" else 0)
    if crds:
        checked = subprocess.run(["node", str(Path(__file__).with_name("validate_keda.js")), keda_schemas],
                                 input=json.dumps(crds), capture_output=True, text=True, timeout=60, check=True)
        assert json.loads(checked.stdout) == []


def test_the_validators_do_refuse_what_is_wrong(config, keda_schemas):
    objects = render(config, IMAGE, "keda")
    deployment = json.loads(json.dumps(by_kind(objects, "Deployment")["shipyard-engine-chat"]))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/ready"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.37", strict=True)
    scaled = json.loads(json.dumps(by_kind(objects, "ScaledObject")["shipyard-engine-chat"]))
    scaled["spec"]["minReplicaCount"] = "two"
    checked = subprocess.run(["node", str(Path(__file__).with_name("validate_keda.js")), keda_schemas],
                             input=json.dumps([scaled]), capture_output=True, text=True, timeout=60, check=True)
    assert "minReplicaCount must be integer" in checked.stdout


def test_the_autoscalers_carry_the_policys_numbers(config):
    chat = config.deployments["chat"].autoscaling
    keda = by_kind(render(config, IMAGE, "keda"), "ScaledObject")
    scaled = keda["shipyard-engine-chat"]["spec"]
    assert (scaled["minReplicaCount"], scaled["maxReplicaCount"]) == (chat.min_replicas, chat.max_replicas)
    trigger = scaled["triggers"][0]
    assert trigger["metricType"] == "AverageValue" and float(trigger["metadata"]["threshold"]) == 8
    promql_parser.parse(trigger["metadata"]["query"])  # the queue depth: running + waiting, on the engines
    assert "shipyard:num_requests_running" in trigger["metadata"]["query"]
    behavior = scaled["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 180
    assert behavior["scaleDown"]["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 30}]
    assert behavior["scaleUp"]["policies"][0]["value"] == chat.max_scale_up_step
    staging = keda["shipyard-engine-staging"]["spec"]
    assert staging["minReplicaCount"] == 0 and staging["cooldownPeriod"] == 600  # KEDA scales it to zero
    hpa = by_kind(render(config, IMAGE, "hpa"), "HorizontalPodAutoscaler")
    assert hpa["shipyard-engine-staging"]["spec"]["minReplicas"] == 1  # an HPA never goes below one
    assert hpa["shipyard-engine-chat"]["spec"]["metrics"][0]["pods"]["target"]["averageValue"] == "8"


def test_probes_budgets_and_the_gateway_config(config):
    objects = render(config, IMAGE, "keda")
    for deployment in by_kind(objects, "Deployment").values():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
        assert container["livenessProbe"]["httpGet"]["path"] == "/health"
        assert all("value" not in e for e in container["env"] if e["name"] != "HF_HUB_OFFLINE")  # secrets by reference
    engine = by_kind(objects, "Deployment")["shipyard-engine-chat"]["spec"]
    assert "replicas" not in engine  # the autoscaler owns the count
    budgets = by_kind(objects, "PodDisruptionBudget")
    assert budgets["shipyard-gateway"]["spec"]["minAvailable"] == 1
    assert budgets["shipyard-engine-chat"]["spec"]["maxUnavailable"] == 1
    gateway = yaml.safe_load(by_kind(objects, "ConfigMap")["shipyard-gateway"]["data"]["shipyard.yaml"])
    parsed = ShipyardConfig.model_validate(gateway)
    replica = parsed.deployments["chat"].replicas[0]
    assert replica.url == "http://shipyard-engine-chat:8000" and replica.api_key_env == "SHIPYARD_WORKER_TOKEN"
    services = by_kind(objects, "Service")
    assert set(services) == {"shipyard-gateway", "shipyard-engine-chat", "shipyard-engine-staging"}


@pytest.mark.parametrize("autoscaler", ["keda", "hpa"])
def test_the_committed_examples_are_current(config, autoscaler):
    assert (EXAMPLE / f"{autoscaler}.yaml").read_text() == to_yaml(render(config, IMAGE, autoscaler))
