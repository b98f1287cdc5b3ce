"""Kubernetes manifests from shipyard.yaml (`shipyard scaling manifests`): the same deployments and
the same scaling targets, rendered for a cluster.

- the gateway: a Deployment of Shipyard servers (2 pods, readiness on /ready, liveness on /health),
  its Service and a PodDisruptionBudget; its shipyard.yaml in a ConfigMap, where each model is an
  `openai_http` replica at its engine Service;
- per model: an engine Deployment of `shipyard worker` pods (CPU from num_threads, GPUs when
  asked), its Service and a PodDisruptionBudget (one pod down at a time);
- per model, the autoscaler, with the policy's numbers: a KEDA `ScaledObject` on the engines' own
  queue depth (running + waiting per pod, from Prometheus; `AverageValue`, so the threshold is the
  per-replica target; scale to zero when min_replicas is 0), or, where KEDA is not installed, an
  `autoscaling/v2` HPA on the same figure through a custom-metrics adapter (and never below one
  pod). Both carry the policy's windows as HPA behavior: fast up by `max_scale_up_step`, down one
  pod per `scale_down_interval_s` after `scale_down_window_s`.

Secrets are referenced, never rendered: a Secret `shipyard-secrets` holds `admin-key`,
`worker-token`, `key-pepper` and `database-url` (docs/scaling.md shows the kubectl line).
"""

from __future__ import annotations

from typing import Literal

from shipyard.config import RoutedDeployment, ShipyardConfig, TransformersDeployment
from shipyard.scaling.policy import ScalingConfig

PORT = 8000
SECRET = "shipyard-secrets"
QUEUE_QUERY = ('sum(shipyard:num_requests_running{{job="{job}",model_name="{model}"}}) + '
               'sum(shipyard:num_requests_waiting{{job="{job}",model_name="{model}"}})')


def _engines(config: ShipyardConfig) -> dict[str, tuple[str, int, ScalingConfig]]:
    """Each model an engine Deployment serves: (model folder, threads, scaling)."""
    engines = {}
    for name, spec in config.deployments.items():
        if isinstance(spec, TransformersDeployment):
            engines[name] = (spec.model, spec.num_threads, ScalingConfig(min_replicas=1, max_replicas=1))
        elif isinstance(spec, RoutedDeployment) and spec.autoscaling is not None:
            template = spec.autoscaling.replica
            scaling = ScalingConfig(**spec.autoscaling.model_dump(include=set(ScalingConfig.model_fields)))
            engines[name] = (template.model, template.num_threads, scaling)
    return engines


def _secret_env(name: str, key: str, optional: bool = False) -> dict:
    ref = {"name": SECRET, "key": key, **({"optional": True} if optional else {})}
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}


def _probes(container: dict) -> dict:
    http = {"port": "http"}
    container["readinessProbe"] = {"httpGet": {**http, "path": "/ready"}, "periodSeconds": 5, "failureThreshold": 3}
    container["livenessProbe"] = {"httpGet": {**http, "path": "/health"}, "periodSeconds": 10,
                                  "failureThreshold": 6, "initialDelaySeconds": 30}
    container["startupProbe"] = {"httpGet": {**http, "path": "/health"}, "periodSeconds": 5,
                                 "failureThreshold": 120}  # a model load may take minutes
    return container


def _labels(component: str, model: str | None = None) -> dict:
    labels = {"app.kubernetes.io/name": "shipyard", "app.kubernetes.io/component": component}
    return {**labels, "shipyard.dev/model": model} if model else labels


def _deployment(name: str, labels: dict, replicas: int | None, container: dict, volumes: list[dict]) -> dict:
    spec = {"selector": {"matchLabels": labels},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {"metadata": {"labels": labels, "annotations": {
                "prometheus.io/scrape": "true", "prometheus.io/port": str(PORT), "prometheus.io/path": "/metrics"}},
                "spec": {"terminationGracePeriodSeconds": 60, "containers": [container], "volumes": volumes}}}
    if replicas is not None:  # an autoscaled Deployment leaves the count to its autoscaler
        spec["replicas"] = replicas
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": labels}, "spec": spec}


def _service(name: str, labels: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": labels},
            "spec": {"selector": labels, "ports": [{"name": "http", "port": PORT, "targetPort": "http"}]}}


def _budget(name: str, labels: dict, **rule) -> dict:
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": name, "labels": labels},
            "spec": {"selector": {"matchLabels": labels}, **rule}}


def _behavior(scaling: ScalingConfig) -> dict:
    """The policy's windows and rate limits as HPA behavior (KEDA passes it to the HPA it makes)."""
    return {"scaleUp": {"stabilizationWindowSeconds": int(scaling.scale_up_window_s),
                        "policies": [{"type": "Pods", "value": scaling.max_scale_up_step, "periodSeconds": 15}]},
            "scaleDown": {"stabilizationWindowSeconds": int(scaling.scale_down_window_s),
                          "policies": [{"type": "Pods", "value": 1,
                                        "periodSeconds": max(1, int(scaling.scale_down_interval_s))}]}}


def _gateway_config(config: ShipyardConfig, engines: dict) -> dict:
    data = config.model_dump(mode="json")  # whole: a left-out default can be what tells a deployment apart
    data["server"] = {**data.get("server", {}), "host": "0.0.0.0", "port": PORT}
    for name in engines:
        data["deployments"][name] = {"replicas": [{
            "engine": "openai_http", "url": f"http://shipyard-engine-{name}:{PORT}", "flavor": "shipyard",
            "api_key_env": "SHIPYARD_WORKER_TOKEN", "name": f"{name}-service"}]}
    return data


def render(config: ShipyardConfig, image: str, autoscaler: Literal["keda", "hpa"] = "keda",
           prometheus_url: str = "http://prometheus-operated.monitoring:9090", models_claim: str = "shipyard-models",
           gpus: int = 0) -> list[dict]:
    """Every object, in apply order."""
    import yaml

    engines = _engines(config)
    objects: list[dict] = []
    gateway = _labels("gateway")
    objects.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "shipyard-gateway", "labels": gateway},
                    "data": {"shipyard.yaml": yaml.safe_dump(_gateway_config(config, engines), sort_keys=False)}})
    container = _probes({
        "name": "gateway", "image": image, "args": ["serve", "--config", "/etc/shipyard/shipyard.yaml"],
        "ports": [{"name": "http", "containerPort": PORT}],
        "env": [_secret_env("SHIPYARD_ADMIN_KEY", "admin-key"), _secret_env("SHIPYARD_KEY_PEPPER", "key-pepper"),
                _secret_env("SHIPYARD_WORKER_TOKEN", "worker-token"),
                _secret_env("SHIPYARD_DATABASE_URL", "database-url"),
                _secret_env("SHIPYARD_REDIS_URL", "redis-url", optional=True)],
        "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
        "volumeMounts": [{"name": "config", "mountPath": "/etc/shipyard", "readOnly": True}]})
    objects += [_deployment("shipyard-gateway", gateway, 2, container,
                            [{"name": "config", "configMap": {"name": "shipyard-gateway"}}]),
                _service("shipyard-gateway", gateway), _budget("shipyard-gateway", gateway, minAvailable=1)]
    for name, (model, threads, scaling) in engines.items():
        objects += _engine(name, model, threads, scaling, image, models_claim, gpus)
        objects.append(_keda(name, scaling, prometheus_url) if autoscaler == "keda" else _hpa(name, scaling))
    return objects


def _engine(name: str, model: str, threads: int, scaling: ScalingConfig, image: str, claim: str, gpus: int) -> list:
    labels = _labels("engine", name)
    resources: dict = {"requests": {"cpu": str(threads), "memory": "2Gi"}, "limits": {"memory": "8Gi"}}
    if gpus:
        resources["limits"]["nvidia.com/gpu"] = str(gpus)
    container = _probes({
        "name": "engine", "image": image, "ports": [{"name": "http", "containerPort": PORT}],
        "args": ["worker", "--model", f"/models/{model.rstrip('/').rsplit('/', 1)[-1]}", "--served-model-name", name,
                 "--host", "0.0.0.0", "--port", str(PORT), "--num-threads", str(threads)],
        "env": [_secret_env("SHIPYARD_WORKER_TOKEN", "worker-token"), {"name": "HF_HUB_OFFLINE", "value": "1"}],
        "resources": resources,
        "volumeMounts": [{"name": "models", "mountPath": "/models", "readOnly": True}]})
    # The gateway drains a replica before it goes; in Kubernetes, in-flight streams get the grace period.
    container["lifecycle"] = {"preStop": {"sleep": {"seconds": 5}}}  # endpoints update before SIGTERM
    return [_deployment(f"shipyard-engine-{name}", labels, None, container,
                        [{"name": "models", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}]),
            _service(f"shipyard-engine-{name}", labels),
            _budget(f"shipyard-engine-{name}", labels, maxUnavailable=1)]


def _keda(name: str, scaling: ScalingConfig, prometheus_url: str) -> dict:
    job = f"shipyard-engine-{name}"
    return {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
            "metadata": {"name": job, "labels": _labels("autoscaler", name)},
            "spec": {"scaleTargetRef": {"name": job}, "minReplicaCount": scaling.min_replicas,
                     "maxReplicaCount": scaling.max_replicas, "pollingInterval": 5,
                     "cooldownPeriod": int(scaling.scale_to_zero_delay_s),
                     "advanced": {"horizontalPodAutoscalerConfig": {"behavior": _behavior(scaling)}},
                     "triggers": [{"type": "prometheus", "metricType": "AverageValue", "metadata": {
                         "serverAddress": prometheus_url, "query": QUEUE_QUERY.format(job=job, model=name),
                         "threshold": f"{scaling.target_queue_per_replica:g}",
                         "activationThreshold": "0", "ignoreNullValues": "true"}}]}}


def _hpa(name: str, scaling: ScalingConfig) -> dict:
    job = f"shipyard-engine-{name}"
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": job, "labels": _labels("autoscaler", name)},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": job},
                     "minReplicas": max(1, scaling.min_replicas), "maxReplicas": scaling.max_replicas,
                     "behavior": _behavior(scaling),
                     # running + waiting per pod, named by the custom-metrics adapter (docs/scaling.md)
                     "metrics": [{"type": "Pods", "pods": {
                         "metric": {"name": "shipyard_queue_depth"},
                         "target": {"type": "AverageValue", "averageValue": f"{scaling.target_queue_per_replica:g}"}}}]}}


def to_yaml(objects: list[dict]) -> str:
    import yaml

    return "".join(f"---\n{yaml.safe_dump(o, sort_keys=False)}" for o in objects)
