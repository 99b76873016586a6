from pathlib import Path

import pytest

from cluster.spec import ClusterSpec, SpecError, TracePower, WindPower

SPECS = Path(__file__).resolve().parents[2] / "deploy" / "specs"


def test_default_spec_is_the_documented_one(real_default_model):
    spec = ClusterSpec.default()
    assert (spec.model.path, spec.model.bundled, spec.model.name) == (None, "smollm2-135m-instruct", "smollm2-135m-instruct")
    assert spec.topology == "disaggregated"
    assert set(spec.pools) == {"vision", "prefill", "decode"}
    assert [s.name for s in spec.sites] == ["local"]
    assert spec.qos_class(spec.default_qos_class).priority == 0
    assert ClusterSpec.from_yaml(SPECS / "default.yaml") == spec


@pytest.mark.parametrize("name", ["default.yaml", "colocated.yaml", "e-pd.yaml", "two-sites.yaml"])
def test_every_shipped_spec_loads_and_round_trips(name):
    spec = ClusterSpec.from_yaml(SPECS / name)
    assert ClusterSpec.from_yaml_text(spec.to_yaml()) == spec


def test_trace_paths_resolve_against_the_spec_file(tmp_path):
    (tmp_path / "power").mkdir()
    (tmp_path / "specs").mkdir()
    text = "sites: [{name: a, power: {kind: trace, path: ../power/wind.csv, column: wp1, scale_w: 1000}}]"
    (tmp_path / "specs" / "wind.yaml").write_text(text)
    power = ClusterSpec.from_yaml(tmp_path / "specs" / "wind.yaml").site("a").power
    assert isinstance(power, TracePower)
    assert Path(power.path) == (tmp_path / "power" / "wind.csv").resolve()


def test_the_two_sites_example_needs_no_data_file():
    """Demos run on a fresh clone: the example's wind is the built-in model, not a file."""
    spec = ClusterSpec.from_yaml(SPECS / "two-sites.yaml")
    assert [(s.name, s.power.kind, s.power.farm) for s in spec.sites] == [("farm-a", "wind", "wp1"), ("farm-b", "wind", "wp3")]
    assert len({s.power.seed for s in spec.sites}) == 1  # one joint sample: the farms correlate as calibrated


@pytest.mark.parametrize(
    ("power", "field"),
    [
        ("{kind: wind, farm: wp9, scale_w: 1000}", "farm"),
        ("{kind: wind, farm: wp1}", "scale_w"),
        ("{kind: wind, farm: wp1, scale_w: 1000, hours: 10}", "hours"),
        ("{kind: wind, farm: wp1, scale_w: 1000, hours: 100, start: 100}", "start"),
        ("{kind: wind, farm: wp1, scale_w: 1000, seed: -1}", "seed"),
    ],
)
def test_bad_wind_sources_name_the_field(power, field):
    with pytest.raises(SpecError, match=field):
        ClusterSpec.from_yaml_text(f"sites: [{{name: a, power: {power}}}]")


def test_a_wind_source_defaults_to_a_year_of_seed_zero():
    power = ClusterSpec.from_yaml_text("sites: [{name: a, power: {kind: wind, farm: wp2, scale_w: 500}}]").site("a").power
    assert isinstance(power, WindPower)
    assert (power.seed, power.hours, power.start, power.speed) == (0, 8760, 0, 1.0)


def test_pool_stage_defaults_to_its_key():
    spec = ClusterSpec.from_yaml_text("pools: {prefill: {max_replicas: 8}, decode: {}}")
    assert spec.pools["prefill"].stage == "prefill" and spec.pools["prefill"].max_replicas == 8
    assert spec.pools["decode"].stage == "decode"


def test_lookups_name_what_exists():
    spec = ClusterSpec.default()
    assert spec.site("local").max_replicas == 16
    assert spec.qos_class("batch").slo.ttft_s == 30.0
    with pytest.raises(KeyError, match="local"):
        spec.site("elsewhere")
    with pytest.raises(KeyError, match="interactive"):
        spec.qos_class("premium")


@pytest.mark.parametrize(
    "text, field",
    [
        ("engine: {chunk_size: -1}", "engine.chunk_size"),
        ("engine: {policy: round_robin}", "engine.policy"),
        ("pools: {prefill: {stage: prefill, min_replicas: 3, max_replicas: 1, initial_replicas: 1}, decode: {stage: decode}}", "pools.prefill"),
        ("pools: {prefill: {stage: prefill}}", "decode"),
        ("pools: {prefill: {stage: decode}, decode: {stage: decode}}", "pools.prefill"),
        ("sites: [{name: a}, {name: a}]", "sites"),
        ("sites: [{name: 'bad name'}]", "sites.0.name"),
        ("default_qos_class: premium", "default_qos_class"),
        ("engine: {chunk_sise: 3}", "engine.chunk_sise"),
        ("topology: colocated", "colocated"),
        ("sites: [{name: a, power: {kind: trace, column: wp1}}]", "sites.0.power"),
    ],
)
def test_bad_specs_name_the_field(text, field):
    with pytest.raises(SpecError, match=field.replace(".", r"\.")):
        ClusterSpec.from_yaml_text(text)


def test_errors_list_every_bad_field_with_the_value_given():
    with pytest.raises(SpecError) as info:
        ClusterSpec.from_yaml_text("engine: {chunk_size: -3, block_size: 0}\nhttp_port: 70000\n")
    message = str(info.value)
    assert "engine.chunk_size" in message and "got -3" in message
    assert "engine.block_size" in message and "http_port" in message
    assert "Value error" not in message


def test_model_level_errors_read_without_pydantic_prefixes():
    with pytest.raises(SpecError) as info:
        ClusterSpec.from_yaml_text("pools: {prefill: {max_replicas: 2, initial_replicas: 5}, decode: {}}")
    assert "pools.prefill: initial_replicas (5) must lie in [min_replicas, max_replicas] = [1, 2]" in str(info.value)


def test_not_a_mapping_is_rejected():
    with pytest.raises(SpecError, match="mapping"):
        ClusterSpec.from_yaml_text("- just\n- a list\n")


def test_each_serving_shape_is_named_from_topology_and_pools():
    shapes = {name: ClusterSpec.from_yaml(f"deploy/specs/{name}.yaml").shape for name in ("default", "colocated", "e-pd", "two-sites")}
    assert shapes == {"default": "E/P/D", "colocated": "PD", "e-pd": "E + PD", "two-sites": "P/D"}


def test_the_suite_serves_the_tiny_model_unless_a_spec_names_one():
    assert ClusterSpec.default().model.bundled == "pavana-tiny" and ClusterSpec.default().model.name == "pavana-tiny"
    assert ClusterSpec.parse({"model": {"bundled": "smollm2-135m-instruct"}}).model.name == "smollm2-135m-instruct"


def test_a_model_path_names_the_model_after_its_folder_unless_named():
    assert ClusterSpec.parse({"model": {"path": "/models/Llama-3.1-8B-Instruct"}}).model.name == "Llama-3.1-8B-Instruct"
    assert ClusterSpec.parse({"model": {"path": "/models/llama", "name": "chat"}}).model.name == "chat"


def test_unknown_bundled_model_is_refused_by_name():
    with pytest.raises(SpecError, match="model.bundled"):
        ClusterSpec.parse({"model": {"bundled": "gpt-5"}})


def test_every_bundled_name_the_spec_allows_can_be_written():
    from typing import get_args

    from cluster.spec import BundledModel
    from workers.engine.bundled import BUNDLED_MODELS

    assert set(get_args(BundledModel)) == set(BUNDLED_MODELS)
