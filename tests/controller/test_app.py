"""The application builder's choices, without starting Ray: names, sites, engines, scaling."""

from cluster.spec import ClusterSpec
from controller.app import autoscaling_config, deployment_name, replica_arguments, replica_class, site_resource
from workers.deployments import DecodeReplica, PrefillReplica, VisionReplica


def test_names_and_site_resources():
    assert deployment_name("prefill", "farm-a") == "prefill-farm-a"
    assert site_resource("farm-a") == "site.farm-a"


def test_the_spec_chooses_the_engine_backend():
    spec = ClusterSpec.default()
    assert replica_class("prefill") is PrefillReplica
    assert replica_class("decode") is DecodeReplica
    assert replica_class("vision") is VisionReplica
    assert replica_arguments("decode", spec.sites[0], spec)[1]["backend"] == "pavana"
    vllm_spec = ClusterSpec.parse({"engine": {"backend": "vllm"}})
    for stage in ("prefill", "decode", "colocated"):
        assert replica_arguments(stage, vllm_spec.sites[0], vllm_spec)[1]["backend"] == "vllm"
    assert "backend" not in replica_arguments("vision", vllm_spec.sites[0], vllm_spec)[1]  # the vision stage stays Pavana's


def test_pools_follow_the_plan_through_serves_autoscaling_hook():
    spec = ClusterSpec.parse({"pools": {"prefill": {"min_replicas": 1, "max_replicas": 3, "initial_replicas": 2}, "decode": {}}})
    config = autoscaling_config("prefill", spec.pools["prefill"], spec.sites[0], spec)
    assert (config["min_replicas"], config["max_replicas"], config["initial_replicas"]) == (0, 3, 2)
    assert config["policy"]["policy_function"] == "autoscaler.serve_hook:FollowPlan"
    assert config["policy"]["policy_kwargs"] == {"redis_url": spec.redis_url, "prefix": spec.telemetry_prefix, "pool": "prefill", "site": "local"}


def test_vllm_settings_reach_the_vllm_backend_and_cpu_settings_stay_behind():
    from controller.app import engine_settings
    from workers.backends.vllm_engine_args import VLLM_ONLY, engine_kwargs

    spec = ClusterSpec.parse({
        "model": {"path": "/models/llama"},
        "engine": {"backend": "vllm", "vllm": {"gpu_memory_utilization": 0.5, "tensor_parallel_size": 2, "kv_connector": "LMCacheConnectorV1"}},
    })
    settings = engine_settings(spec)
    assert set(VLLM_ONLY) <= settings.keys() and "num_kv_blocks" not in settings and "num_threads" not in settings
    decode = engine_kwargs(spec.model.path, settings, "decode", multimodal=False)
    assert (decode["gpu_memory_utilization"], decode["tensor_parallel_size"]) == (0.5, 2)
    assert decode["kv_transfer_config"]["kv_connector"] == "LMCacheConnectorV1"
    assert not set(VLLM_ONLY) & engine_settings(ClusterSpec.default()).keys()  # Pavana's engine gets none of them
