"""The application builder: one cluster spec in, one Ray Serve application out.

`build_app(spec)` is the single entry from configuration to cluster; `app_builder(args)` is the
import path that `serve run`, `serve deploy` and KubeRay's `serveConfigV2` name
(`controller.app:build`, an alias). Each pool gets one deployment per site, named
`<stage>-<site>`, pinned to the site by the Ray custom resource `site.<name>`.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve.config import RequestRouterConfig

from cluster.spec import ClusterSpec, PoolSpec, SiteSpec
from workers.deployments import ColocatedReplica, DecodeReplica, PrefillReplica, VisionReplica

APP_NAME = "pavana"
INGRESS_NAME = "Ingress"
# The ingress serves the operator dashboard and /metrics through this (the router never
# imports the controller: it is handed the import path).
OPERATOR_CONSOLE = "controller.dashboard.service:Dashboard"

_REPLICA_CLASSES = {
    "prefill": PrefillReplica,
    "decode": DecodeReplica,
    "colocated": ColocatedReplica,
    "vision": VisionReplica,
}

# Replica choice inside a pool (router/replica_router.py): prefill by queued prefill tokens
# with prefix affinity, decode by free KV blocks.
_REQUEST_ROUTERS = {
    "prefill": "router.replica_router:PrefillRequestRouter",
    "colocated": "router.replica_router:PrefillRequestRouter",
    "decode": "router.replica_router:DecodeRequestRouter",
}

# The fraction of a site's resource that one replica claims: small, so a site's capacity is
# bounded by its spec's `max_replicas`, not by this bookkeeping.
SITE_RESOURCE_PER_REPLICA = 0.001


def replica_class(stage: str) -> type:
    """The replica class of a pool; which engine runs inside (`engine.backend`: Pavana's or, on
    GPU nodes, vLLM's) is the replica's argument, not another class. Vision is always Pavana's."""
    return _REPLICA_CLASSES[stage]


def deployment_name(stage: str, site: str) -> str:
    return f"{stage}-{site}"


def site_resource(site: str) -> str:
    return f"site.{site}"


def engine_settings(spec: ClusterSpec) -> dict[str, Any]:
    """The spec's engine section as the backend's settings: `EngineConfig` keyword arguments for
    Pavana's engine (mode is the pool's), `workers/backends/vllm_engine_args.py`'s keys for vLLM."""
    e = spec.engine
    settings = dict(
        policy=e.policy,
        chunk_size=e.chunk_size,
        max_num_seqs=e.max_num_seqs,
        block_size=e.block_size,
        num_kv_blocks=e.num_kv_blocks,
        enable_prefix_caching=e.enable_prefix_caching,
        dtype=spec.model.dtype,
        num_threads=e.num_threads,
    )
    if spec.model.max_model_len:
        settings["max_model_len"] = spec.model.max_model_len
    if spec.tbt_target_s is not None:
        settings["tbt_target_s"] = spec.tbt_target_s
    if e.backend == "vllm":
        settings.update(e.vllm.model_dump())
        # Pavana's CPU engine's alone: vLLM sizes its cache from GPU memory and budgets its own steps.
        for key in ("num_kv_blocks", "num_threads", "tbt_target_s"):
            settings.pop(key, None)
    return settings


def autoscaling_config(stage: str, pool: PoolSpec, site: SiteSpec, spec: ClusterSpec) -> dict[str, Any]:
    """Ray Serve sizes the deployment by calling `FollowPlan`, which returns what the reconcile
    loop's plan says for this pool@site (and holds the size when there is no fresh plan).
    Serve's floor is zero: the plan keeps the pool's minimum, except where a site's power
    cannot afford it (a dark site runs no replicas)."""
    return {
        "min_replicas": 0,
        "max_replicas": max(1, pool.max_replicas),
        "initial_replicas": pool.initial_replicas,
        "upscale_delay_s": 0,
        "downscale_delay_s": 0,
        "policy": {
            "policy_function": "autoscaler.serve_hook:FollowPlan",
            "policy_kwargs": {"redis_url": spec.redis_url, "prefix": spec.telemetry_prefix, "pool": stage, "site": site.name},
        },
    }


def telemetry_settings(spec: ClusterSpec, site: SiteSpec) -> dict[str, Any]:
    """Where a replica publishes its heartbeat (`workers.heartbeat.TelemetrySettings`)."""
    return {
        "redis_url": spec.redis_url,
        "prefix": spec.telemetry_prefix,
        "replica_power_w": site.power_modes[0].power_w,
        "power_modes": [(m.name, m.power_w, m.throughput_fraction) for m in site.power_modes],
    }


def _pool_deployment(stage: str, pool: PoolSpec, site: SiteSpec, spec: ClusterSpec, *, use_site_resources: bool):
    actor_options: dict[str, Any] = {"num_cpus": pool.num_cpus, "num_gpus": pool.num_gpus}
    if use_site_resources:
        actor_options["resources"] = {site_resource(site.name): SITE_RESOURCE_PER_REPLICA}
    options: dict[str, Any] = dict(
        name=deployment_name(stage, site.name),
        autoscaling_config=autoscaling_config(stage, pool, site, spec),
        ray_actor_options=actor_options,
        max_ongoing_requests=1024,
        health_check_period_s=5,
    )
    if stage in _REQUEST_ROUTERS:
        options["request_router_config"] = RequestRouterConfig(
            request_router_class=_REQUEST_ROUTERS[stage],
            request_router_kwargs={"block_size": spec.engine.block_size},
            request_routing_stats_period_s=0.5,
        )
    deployment = serve.deployment(replica_class(stage)).options(**options)
    args, kwargs = replica_arguments(stage, site, spec)
    return deployment.bind(*args, **kwargs)


def replica_arguments(stage: str, site: SiteSpec, spec: ClusterSpec) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """What each replica of `stage` at `site` is constructed with. Replicas write the bundled
    model themselves, on their own node, when the path is None."""
    model_path, bundled = spec.model.path, spec.model.bundled
    if stage == "vision":
        return (model_path, stage, site.name, telemetry_settings(spec, site)), {"bundled": bundled}
    return (model_path, engine_settings(spec), stage, site.name, telemetry_settings(spec, site)), {
        "bundled": bundled, "backend": spec.engine.backend,
    }


def build_app(spec: ClusterSpec, *, use_site_resources: bool = True) -> serve.Application:
    """Bind every pool of every site and the ingress that orchestrates them."""
    from router.ingress import Ingress

    pools: dict[str, dict[str, Any]] = {}
    for site in spec.sites:
        pools[site.name] = {
            stage: _pool_deployment(stage, pool, site, spec, use_site_resources=use_site_resources)
            for stage, pool in spec.pools.items()
        }
    ingress_actor: dict[str, Any] = {"num_cpus": 0}
    if spec.ingress_resources:
        ingress_actor["resources"] = dict(spec.ingress_resources)
    ingress = serve.deployment(Ingress).options(name=INGRESS_NAME, max_ongoing_requests=4096, ray_actor_options=ingress_actor)
    return ingress.bind(spec.model_dump(mode="json"), pools, OPERATOR_CONSOLE)


def app_builder(args: dict[str, str]) -> serve.Application:
    """Entry for `serve run controller.app:build spec=FILE` and KubeRay's serveConfigV2.

    `spec` names a YAML file; `api_keys` and `operator_token`, when given (KubeRay passes them
    from a Secret through the environment, see deploy/kuberay), override the file's."""
    import os

    spec = ClusterSpec.from_yaml(args["spec"]) if "spec" in args else ClusterSpec.default()
    update: dict[str, Any] = {}
    keys = args.get("api_keys") or os.environ.get("PAVANA_API_KEYS", "")
    if keys:
        update["api_keys"] = [k for k in keys.split(",") if k]
    token = args.get("operator_token") or os.environ.get("PAVANA_OPERATOR_TOKEN")
    if token:
        update["operator_token"] = token
    if update:
        spec = ClusterSpec.model_validate({**spec.model_dump(mode="json"), **update})
    return build_app(spec)


build = app_builder
