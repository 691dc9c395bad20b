"""How much memory a run needs on each device, before it runs (``magrpo plan``).

A model's shape comes from its ``config.json`` (a local folder, the Hugging Face cache) or, for
the models this project trains, from :data:`KNOWN_MODELS` (their published config.json
numbers), so that planning downloads and loads nothing; this module imports nothing heavy.

A step goes through phases, and the memory of a device is the largest phase: what is held
through the whole step (weights, AdamW moments, copies, engines) plus what one phase adds (the
rollout's KV caches; an update's gradients, activations and logits; the optimiser step's
temporaries). Each term says how it is estimated (:attr:`Term.how`); the activation formula
counts the tensors autograd keeps for backward in transformers' Llama/Qwen2/Qwen3 decoder layers
(``tests/test_memory_plan.py`` checks it against the tensors a tiny model actually saves).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from magrpo.errors import ConfigError

if TYPE_CHECKING:
    from magrpo.config import MAGRPOConfig

GiB = 2**30
#: bytes per element of the dtypes a run names
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
#: a GPU's CUDA context and the caching allocator's reserve beyond what tensors hold (stated, not measured here)
GPU_OVERHEAD = 1 * GiB
#: a CPU process's interpreter with torch and transformers imported, before any model (measured on
#: the 2-core development machine: 457 MiB; benchmarks/plan_accuracy.py reports it again)
CPU_OVERHEAD = int(0.45 * GiB)
#: a vLLM engine in a process of its own on a CPU: its interpreter, torch and vLLM (a rough figure)
CPU_ENGINE_PROCESS = 1 * GiB
#: the linear layers of a decoder layer, as peft's "all-linear" takes them (the output layer excluded)
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# ---------------------------------------------------------------------- models
@dataclass(frozen=True)
class ModelShape:
    """What memory needs to know of a decoder: the numbers of its ``config.json``."""

    name: str
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    tied: bool
    max_positions: int
    #: biases on the q, k and v projections (Qwen2)
    qkv_bias: bool = False
    #: RMSNorm on each head's queries and keys (Qwen3)
    qk_norm: bool = False

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def linears(self) -> dict[str, tuple[int, int]]:
        """Each linear layer of a decoder layer: (in features, out features)."""
        h, i = self.hidden, self.intermediate
        return {
            "q_proj": (h, self.q_dim),
            "k_proj": (h, self.kv_dim),
            "v_proj": (h, self.kv_dim),
            "o_proj": (self.q_dim, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    @property
    def layer_params(self) -> int:
        weights = sum(n_in * n_out for n_in, n_out in self.linears().values())
        biases = self.q_dim + 2 * self.kv_dim if self.qkv_bias else 0
        norms = 2 * self.hidden + (2 * self.head_dim if self.qk_norm else 0)
        return weights + biases + norms

    @property
    def params(self) -> int:
        """Every parameter, a tied output layer counted once (it is the embedding)."""
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return embeddings + self.layers * self.layer_params + self.hidden

    @property
    def largest_tensor(self) -> int:
        """Elements of the largest parameter tensor (the embedding, in these models)."""
        return max(self.vocab * self.hidden, *(a * b for a, b in self.linears().values()))

    def lora_params(self, rank: int, targets: str | Sequence[str]) -> int:
        """Parameters of one LoRA adapter of rank ``rank`` on ``targets`` ("all-linear" or module names):
        rank x (in + out) per adapted linear layer."""
        names = LINEARS if targets == "all-linear" else [t for t in LINEARS if t in set(_as_list(targets))]
        return self.layers * sum(rank * sum(self.linears()[name]) for name in names)

    def kv_bytes_per_token(self, nbytes: int) -> int:
        """A KV cache's bytes per token: keys and values of every layer."""
        return 2 * self.layers * self.kv_dim * nbytes

    @classmethod
    def from_config(cls, config: Mapping[str, Any], name: str) -> "ModelShape":
        """From a ``config.json``'s fields (a multimodal config's ``text_config``)."""
        text = config.get("text_config") or config
        try:
            heads = int(text["num_attention_heads"])
            hidden = int(text["hidden_size"])
            model_type = str(text.get("model_type", config.get("model_type", "")))
            return cls(
                name=name,
                vocab=int(text["vocab_size"]),
                hidden=hidden,
                layers=int(text["num_hidden_layers"]),
                heads=heads,
                kv_heads=int(text.get("num_key_value_heads") or heads),
                head_dim=int(text.get("head_dim") or hidden // heads),
                intermediate=int(text["intermediate_size"]),
                tied=bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
                max_positions=int(text.get("max_position_embeddings") or 0),
                qkv_bias=model_type == "qwen2" or bool(text.get("attention_bias", False)),
                qk_norm=model_type.startswith("qwen3"),
            )
        except KeyError as exc:
            missing = exc.args[0]
            raise ConfigError(f"the config.json of {name!r} lacks {missing!r}: not a decoder magrpo can plan") from None


#: the published config.json numbers of the models this project trains (Hugging Face model cards)
KNOWN_MODELS: dict[str, ModelShape] = {
    shape.name: shape
    for shape in (
        ModelShape("SmolLM2-135M-Instruct", 49152, 576, 30, 9, 3, 64, 1536, True, 8192),
        ModelShape("Qwen2.5-Coder-0.5B-Instruct", 151936, 896, 24, 14, 2, 64, 4864, True, 32768, qkv_bias=True),
        ModelShape("Qwen2.5-Coder-3B-Instruct", 151936, 2048, 36, 16, 2, 128, 11008, True, 32768, qkv_bias=True),
        ModelShape("Qwen3-1.7B", 151936, 2048, 28, 16, 8, 128, 6144, True, 40960, qk_norm=True),
    )
}
#: magrpo's own model names (magrpo.models.presets) -> the known model they are
NAMED_MODELS = {"default": "SmolLM2-135M-Instruct", "qwen2.5-coder-0.5b": "Qwen2.5-Coder-0.5B-Instruct"}


def model_shape(spec: str) -> ModelShape:
    """The shape of ``spec``: a local folder's config.json, a named or known model (a Hub id's last
    part, with or without "-Instruct": a base model has its instruct model's shape), or a Hub id's
    config.json in the local Hugging Face cache. Nothing is downloaded or loaded."""
    spec = os.fspath(spec)
    if spec in NAMED_MODELS:
        return KNOWN_MODELS[NAMED_MODELS[spec]]
    path = Path(spec).expanduser()
    if (path / "config.json").is_file():
        return ModelShape.from_config(json.loads((path / "config.json").read_text()), path.name)
    wanted = spec.rsplit("/", 1)[-1].lower().removesuffix("-instruct")
    for name, shape in KNOWN_MODELS.items():
        if name.lower().removesuffix("-instruct") == wanted:
            return shape
    cached = _hub_cache_config(spec)
    if cached is not None:
        return ModelShape.from_config(json.loads(cached.read_text()), spec)
    known = ", ".join([*NAMED_MODELS, *KNOWN_MODELS])
    raise ConfigError(
        f"no config.json for model {spec!r}: give a local model folder, a Hub id in the local Hugging Face cache, "
        f"or one of {known}"
    )


def _hub_cache_config(spec: str) -> Path | None:
    if spec.count("/") != 1:
        return None
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    hub = Path(os.environ.get("HF_HUB_CACHE", home / "hub"))
    found = sorted((hub / f"models--{spec.replace('/', '--')}" / "snapshots").glob("*/config.json"))
    return found[-1] if found else None


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


# ---------------------------------------------------------------------- devices
@dataclass(frozen=True)
class Device:
    """A device to plan: ``name`` as a run names it ("cuda:0", "cpu"), its memory in bytes."""

    name: str
    memory: int
    label: str = ""

    @property
    def is_gpu(self) -> bool:
        return self.name.startswith("cuda")

    def describe(self) -> str:
        label = f" ({self.label})" if self.label else ""
        return f"{self.name}{label}, {self.memory / GiB:.1f} GiB"


_SIZE = re.compile(r"(?P<amount>\d+(?:\.\d+)?)\s*(?P<unit>GiB|GB|G|MiB|MB)$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """ "80GB", "80GiB", "24G", "512MB" -> bytes. A GPU sold as "80 GB" holds 80 GiB (an H100 80GB
    reports 81,559 MiB), so GB is read as GiB here, as MB is MiB."""
    match = _SIZE.search(text.strip())
    if not match:
        raise ConfigError(f"{text!r} names no memory size; write it as 80GB (read as GiB) or 512MB")
    scale = GiB if match["unit"].lower().startswith("g") else 2**20
    return int(float(match["amount"]) * scale)


def parse_devices(text: str) -> list[Device]:
    """Devices from a description: "cpu" (this machine's memory), "cpu=24GB", "4xH100-80GB" (4
    GPUs cuda:0..3), "2x80GB", "H100-80GB" (one), or a comma list "cuda:0=80GB,cuda:1=40GB"."""
    text = text.strip()
    if text in ("", "auto", "this"):
        return this_machine()
    if text == "cpu":
        return [Device("cpu", host_memory(), "this machine's memory")]
    if "," in text or "=" in text:
        devices = []
        for part in text.split(","):
            name, _, size = part.partition("=")
            if not size:
                raise ConfigError(f"device {part!r}: write it as NAME=SIZE, e.g. cuda:0=80GB")
            name = name.strip()
            if name != "cpu" and not re.fullmatch(r"cuda:\d+", name):
                raise ConfigError(f"device {name!r}: expected cpu or cuda:N")
            devices.append(Device(name, parse_size(size), size.strip()))
        return devices
    count, _, gpu = text.rpartition("x") if re.match(r"\d+x", text) else ("1", "", text)
    return [Device(f"cuda:{k}", parse_size(gpu), gpu) for k in range(int(count))]


def host_memory() -> int:
    """This machine's memory in bytes (MemTotal)."""
    try:
        return int(re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text()).group(1)) * 1024
    except (OSError, AttributeError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def this_machine() -> list[Device]:
    """This machine's GPUs (from nvidia-smi, without loading torch), else its CPU memory."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run(
                [smi, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=20,
            ).stdout
            rows = [line.rsplit(",", 1) for line in out.strip().splitlines() if "," in line]
            if rows:
                return [Device(f"cuda:{k}", int(mib) * 2**20, name.strip()) for k, (name, mib) in enumerate(rows)]
        except (OSError, subprocess.SubprocessError, ValueError):
            pass
    return [Device("cpu", host_memory(), "this machine's memory")]


# ---------------------------------------------------------------------- what a run does
@dataclass(frozen=True)
class Placement:
    """Where a run puts things: each agent's device (as rank 0 sees it), the data-parallel ranks
    (one device each), and whether they shard (FSDP2) the agents."""

    agent_devices: tuple[str, ...]
    ranks: int = 1
    shard: bool = False
    #: a smaller update micro-batch than the config's, where a suggestion needs one (None: the config's)
    micro_batch: int | None = None

    def describe(self) -> str:
        smaller = f", micro-batch {self.micro_batch}" if self.micro_batch else ""
        if self.ranks > 1:
            how = "sharded (FSDP2)" if self.shard else "replicated"
            where = "one GPU each" if self.agent_devices[0].startswith("cuda") else f"all on {self.agent_devices[0]}"
            return f"{self.ranks} ranks, {where}, the team {how}{smaller}"
        devices = sorted(set(self.agent_devices))
        if len(devices) == 1:
            return f"one process, every agent on {devices[0]}{smaller}"
        return "one process, " + ", ".join(f"agent_{i} on {d}" for i, d in enumerate(self.agent_devices)) + smaller

    def train_flags(self) -> str:
        """The ``magrpo train`` flags that make this placement ("" for none)."""
        flags = []
        if self.ranks > 1:
            flags.append(f"--nproc {self.ranks}" + (" --set data_parallel=shard" if self.shard else ""))
        elif len(set(self.agent_devices)) > 1:
            flags.append(f"--set agent_devices=[{','.join(self.agent_devices)}]")
        if self.micro_batch:
            flags.append(f"--set update_micro_batch_size={self.micro_batch}")
        return " ".join(flags)


@dataclass(frozen=True)
class Workload:
    """What a step processes beside the config: the longest first-turn prompt in tokens, and the
    tokens a later turn's prompt adds beyond the previous answer (feedback and the request to revise)."""

    prompt_tokens: int
    feedback_tokens: int = 0

    def prompt_at(self, turn: int, max_new_tokens: int) -> int:
        """The prompt of turn ``turn`` (1-based): the first prompt, then each earlier answer and its feedback."""
        return self.prompt_tokens + (turn - 1) * (max_new_tokens + self.feedback_tokens)


#: a held term is alive through the whole step
HELD = "held"


@dataclass(frozen=True)
class Term:
    """One thing in a device's memory: its size, when it is alive (``HELD``, or the phases it is
    alive in: "rollout", "update of agent_0", ...), and how its size is estimated."""

    what: str
    bytes: int
    phases: tuple[str, ...]
    how: str


@dataclass
class DevicePlan:
    device: Device
    terms: list[Term] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: processes that each hold these terms in this device's memory (ranks sharing one CPU)
    processes: int = 1

    def add(self, what: str, nbytes: float, phases: str | Iterable[str], how: str) -> None:
        phases = (phases,) if isinstance(phases, str) else tuple(phases)
        self.terms.append(Term(what, int(nbytes), phases, how))

    @property
    def held(self) -> int:
        return sum(t.bytes for t in self.terms if HELD in t.phases)

    def phase_bytes(self) -> dict[str, int]:
        """Each phase's memory: the held terms and that phase's own."""
        phases = dict.fromkeys(p for t in self.terms for p in t.phases if p != HELD)
        return {p: self.held + sum(t.bytes for t in self.terms if p in t.phases) for p in phases} or {HELD: self.held}

    @property
    def peak_phase(self) -> str:
        phases = self.phase_bytes()
        return max(phases, key=phases.get)

    @property
    def peak(self) -> int:
        return self.processes * max(self.phase_bytes().values())

    @property
    def margin(self) -> int:
        return self.device.memory - self.peak

    @property
    def fits(self) -> bool:
        return self.margin >= 0

    def verdict(self) -> str:
        free = abs(self.margin) / GiB
        if self.fits:
            return f"fits: peak {self.peak / GiB:.1f} GiB ({self.peak_phase}), {free:.1f} GiB to spare"
        return f"does not fit: peak {self.peak / GiB:.1f} GiB ({self.peak_phase}), {free:.1f} GiB short"


@dataclass
class MemoryPlan:
    placement: Placement
    devices: list[DevicePlan]
    precision: dict[str, str]

    @property
    def fits(self) -> bool:
        return all(d.fits for d in self.devices)

    @property
    def peak(self) -> int:
        """The largest device's peak."""
        return max(d.peak for d in self.devices)


# ---------------------------------------------------------------------- the estimator
def plan_memory(
    config: MAGRPOConfig,
    models: Sequence[ModelShape],
    devices: Sequence[Device],
    workload: Workload,
    placement: Placement | None = None,
) -> MemoryPlan:
    """Each device's memory for one step of ``config`` with agent i's model ``models[i]``.

    ``placement`` None: ``config.agent_devices`` where given, else every agent on the first device.
    With ranks, every rank is one of ``devices`` and plans the same: the first device's plan
    stands for each."""
    if len(models) != config.num_agents:
        raise ConfigError(f"{len(models)} models for num_agents={config.num_agents}; give one, or one per agent")
    by_name = {d.name: d for d in devices}
    placement = placement or default_placement(config, devices)
    for name in placement.agent_devices:
        if name not in by_name:
            raise ConfigError(f"the plan places an agent on {name}, which is not among {', '.join(by_name)}")
    run = _Run(config, models, placement, by_name, workload)
    plans = {name: DevicePlan(by_name[name]) for name in dict.fromkeys(placement.agent_devices)}
    if config.beta > 0 and config.reference_device and config.reference_device in by_name:
        plans.setdefault(config.reference_device, DevicePlan(by_name[config.reference_device]))
    for plan in plans.values():
        run.fill(plan)
    return MemoryPlan(placement, list(plans.values()), run.precision())


def default_placement(config: MAGRPOConfig, devices: Sequence[Device]) -> Placement:
    if config.agent_devices:
        return Placement(tuple(config.agent_devices))
    return Placement((devices[0].name,) * config.num_agents)


class _Run:
    """The config resolved as the trainer resolves it (precision, sampler, model groups), and
    every term of one device."""

    def __init__(
        self,
        config: MAGRPOConfig,
        models: Sequence[ModelShape],
        placement: Placement,
        devices: Mapping[str, Device],
        workload: Workload,
    ) -> None:
        self.cfg, self.models, self.placement, self.workload = config, list(models), placement, workload
        self.lora = config.lora_per_agent()
        # agents of one model object: each full agent alone, LoRA agents of one model share a base
        groups: dict[Any, list[int]] = {}
        for i, model in enumerate(models):
            key = ("lora", model.name, placement.agent_devices[i]) if self.lora[i] else ("full", i)
            groups.setdefault(key, []).append(i)
        self.groups = list(groups.values())
        on_gpu = all(devices[d].is_gpu for d in placement.agent_devices)
        self.weight_dtype = "float32" if config.dtype == "auto" else config.dtype
        autocast = config.autocast if config.autocast != "auto" else ("bfloat16" if on_gpu else "no")
        self.autocast = None if autocast == "no" else autocast
        self.backend = self._backend(on_gpu)
        rollout = config.rollout_dtype
        if rollout == "auto":
            copies = self.backend in ("fast", "vllm") and not placement.shard
            rollout = "bfloat16" if self.autocast == "bfloat16" and copies else "same"
        self.rollout_dtype = self.weight_dtype if rollout == "same" else rollout
        self.rollout_plan = config.plan()
        #: the busiest agent's completions per node (G; more for the later agents of a sequential tree)
        self.rows_per_node = self.rollout_plan.generations_per_agent // (
            config.batch_size * sum(self.rollout_plan.nodes_per_turn)
        )
        #: the completions that continue one prompt: G, but as few as one for a sequential agent after
        #: the first (M per earlier answer); 1 is planned there, the most prompts
        self.rows_per_prompt = config.num_generations if config.protocol == "simultaneous" else 1

    def _backend(self, on_gpu: bool) -> str:
        backend = self.cfg.rollout_backend
        if backend != "auto":
            return backend
        if self.placement.shard:
            return "fast"
        # as magrpo.prepare.choose_rollout_backend, vLLM taken as installed on a GPU machine
        return "vllm" if on_gpu or len(self.groups) == 1 else "fast"

    def precision(self) -> dict[str, str]:
        return {
            "weights": self.weight_dtype,
            "autocast": self.autocast or "no (the weights' own)",
            "sampling": f"{self.backend}, {self.rollout_dtype}",
        }

    # -------------------------------------------------------------- sizes
    @property
    def w(self) -> int:
        """Bytes of a weight (and of a gradient, an AdamW moment: torch keeps them in the weights' dtype)."""
        return BYTES[self.weight_dtype]

    @property
    def c(self) -> int:
        """Bytes of an activation: the autocast dtype's, else the weights'."""
        return BYTES[self.autocast] if self.autocast else self.w

    @property
    def casts(self) -> bool:
        """Whether autocast casts the weights (and the linear layers' inputs): weights of another dtype."""
        return self.autocast is not None and self.autocast != self.weight_dtype

    @property
    def shards(self) -> int:
        return self.placement.ranks if self.placement.shard else 1

    def trainable(self, i: int) -> int:
        model = self.models[i]
        return model.lora_params(self.cfg.lora_r, self.cfg.lora_target_modules) if self.lora[i] else model.params

    def trainable_bytes(self, i: int) -> int:
        """LoRA adapters are float32 (peft casts adapters of a bf16 base up); a full agent's are its weights."""
        return 4 if self.lora[i] else self.w

    def concurrent_updates(self, device: Device) -> bool:
        """As Team.updates_at_once: agents with models of their own, on a CPU, float32, one process."""
        return (
            not device.is_gpu
            and self.autocast is None
            and self.cfg.concurrent_agents
            and self.placement.ranks == 1
            and len(self.groups) == self.cfg.num_agents > 1
        )

    def concurrent_sampling(self) -> bool:
        return self.backend == "fast" and self.cfg.concurrent_agents and len(self.groups) > 1

    # -------------------------------------------------------------- terms
    def fill(self, plan: DevicePlan) -> None:
        device = plan.device
        here = [g for g in self.groups if self.placement.agent_devices[g[0]] == device.name]
        for group in here:
            self._model_terms(plan, group)
        for group in here:
            for i in group:
                self._agent_terms(plan, i)
        if self.cfg.beta > 0:
            self._reference_terms(plan)
        plan.add(
            "framework overhead",
            GPU_OVERHEAD if device.is_gpu else CPU_OVERHEAD,
            HELD,
            "a stated constant: the CUDA context and the caching allocator's reserve, 1 GiB"
            if device.is_gpu
            else "a stated constant: the interpreter with torch and transformers imported (457 MiB measured here)",
        )
        if self.cfg.algorithm != "magrpo":
            plan.notes.append(
                f"algorithm={self.cfg.algorithm!r}: its critics (value heads, critic models) are not planned"
            )
        if self.placement.ranks > 1 and device.is_gpu:
            plan.notes.append(f"each of the {self.placement.ranks} ranks holds this, on its own GPU")
        elif self.placement.ranks > 1:
            plan.processes = ranks = self.placement.ranks
            plan.notes.append(f"the {ranks} ranks each hold this in this one memory: the peak counts it {ranks} times")

    def _names(self, group: Sequence[int]) -> str:
        return "+".join(f"agent_{i}" for i in group)

    def _model_terms(self, plan: DevicePlan, group: list[int]) -> None:
        """What one model object costs: its weights, the copy that samples, the engine, the rollout."""
        model, names = self.models[group[0]], self._names(group)
        shards = self.shards
        plan.add(
            f"weights ({names}: {model.name})",
            model.params * self.w / shards,
            HELD,
            f"{model.params / 1e9:.3f} B parameters x {self.w} B ({self.weight_dtype})"
            + (f" / {shards} shards" if shards > 1 else ""),
        )
        plan.add(
            f"master copy ({names})",
            0,
            HELD,
            "none: the trained weights are float32 themselves"
            if self.w == 4
            else f"none: AdamW updates the {self.weight_dtype} weights themselves (small updates round away)",
        )
        if shards > 1:
            plan.add(
                f"gathered weights ({names})",
                model.params * self.w * (shards - 1) / shards,
                "rollout",
                "the rest of the weights, gathered whole on every rank for sampling",
            )
        sampler_bytes = BYTES[self.rollout_dtype]
        if self.backend == "vllm":
            self._engine_terms(plan, group, model, sampler_bytes)
            return
        if self.rollout_dtype != self.weight_dtype:
            plan.add(
                f"sampling copy ({names})",
                model.params * sampler_bytes,
                HELD,
                f"{model.params / 1e9:.3f} B x {sampler_bytes} B ({self.rollout_dtype}), refreshed after each update",
            )
        phase = "rollout" if self.concurrent_sampling() else f"rollout of {names}"
        kv, rows, length = self._sampling_kv(model, sampler_bytes)
        plan.add(
            f"sampling KV cache ({names})",
            kv,
            phase,
            f"2 x {model.layers} layers x {model.kv_dim} (kv heads x head dim) x {sampler_bytes} B x {rows} rows x "
            f"{length} tokens (prompt + max_new_tokens), the largest turn",
        )
        work = (
            rows * model.vocab * 20
            + (rows // self.rows_per_prompt or 1) * length * (2 * model.hidden + 3 * model.intermediate) * sampler_bytes
        )
        plan.add(
            f"sampling workspace ({names})",
            work,
            phase,
            "rows x vocab x 20 B (float32 logits, probabilities, log-probabilities, float64 cumulative sum) + one "
            "layer of the prefill",
        )

    def _sampling_kv(self, model: ModelShape, nbytes: int) -> tuple[int, int, int]:
        """The largest turn's KV cache of one model's sampler: (bytes, rows, tokens per row)."""
        best = (0, 0, 0)
        for t, nodes in enumerate(self.rollout_plan.nodes_per_turn, start=1):
            rows = self.cfg.batch_size * nodes * self.rows_per_node  # agents of one model take turns
            length = self._prompt(t) + self.cfg.longest_completion()
            best = max(best, (rows * length * model.kv_bytes_per_token(nbytes), rows, length))
        return best

    def _prompt(self, turn: int) -> int:
        return self.workload.prompt_at(turn, self.cfg.longest_completion())

    def _engine_terms(self, plan: DevicePlan, group: list[int], model: ModelShape, nbytes: int) -> None:
        names, cfg, device = self._names(group), self.cfg, plan.device
        weights, per_token = model.params * nbytes, model.kv_bytes_per_token(nbytes)
        if device.is_gpu:
            share = cfg.vllm_gpu_memory_utilization or 0.3 / len(self.groups)
            budget = share * device.memory
            phase = "rollout" if cfg.vllm_sleep_mode else HELD
            plan.add(
                f"vLLM engine weights ({names})",
                weights,
                phase,
                f"{model.params / 1e9:.3f} B x {nbytes} B ({self.rollout_dtype})"
                + ("; asleep (offloaded) during the update" if cfg.vllm_sleep_mode else ""),
            )
            plan.add(
                f"vLLM KV cache ({names})",
                max(0, budget - weights),
                phase,
                f"the engine's share {share:.3f} of {device.memory / GiB:.0f} GiB less its weights "
                f"(~{max(0, budget - weights) / per_token:,.0f} tokens at {per_token / 2**10:.0f} KiB each; "
                "vLLM's activation workspace comes out of it)",
            )
            if budget < weights:
                plan.notes.append(
                    f"the vLLM engine of {names} gets {budget / GiB:.1f} GiB, less than its {weights / GiB:.1f} GiB "
                    "of weights: it cannot start; raise vllm_gpu_memory_utilization"
                )
            return
        how = f"{model.params / 1e9:.3f} B x {nbytes} B ({self.rollout_dtype})"
        plan.add(f"vLLM engine weights ({names})", weights, HELD, how)
        kv = cfg.vllm_kv_cache_gib * GiB
        plan.add(
            f"vLLM KV cache ({names})",
            kv,
            HELD,
            f"vllm_kv_cache_gib = {cfg.vllm_kv_cache_gib:g} (2 x {model.layers} layers x {model.kv_dim} x {nbytes} B = "
            f"{per_token / 2**10:.0f} KiB a token: {kv / per_token:,.0f} tokens)",
        )
        own = cfg.vllm_engine_process == "own" or (cfg.vllm_engine_process == "auto" and len(self.groups) > 1)
        if own:
            plan.add(
                f"vLLM engine process ({names})",
                CPU_ENGINE_PROCESS,
                HELD,
                "a stated constant: the engine's own interpreter, torch and vLLM (not measured by plan_accuracy.py)",
            )

    def _agent_terms(self, plan: DevicePlan, i: int) -> None:
        """What one agent's training costs: AdamW moments (held), its update and its optimiser step."""
        model, cfg, name = self.models[i], self.cfg, f"agent_{i}"
        trainable, nbytes, shards = self.trainable(i), self.trainable_bytes(i), self.shards
        what = f"LoRA r={cfg.lora_r} adapter, {trainable / 1e6:.2f} M parameters" if self.lora[i] else "every weight"
        per_shard = f" / {shards} shards" if shards > 1 else ""
        plan.add(
            f"AdamW moments ({name})",
            2 * trainable * nbytes / shards,
            HELD,
            f"2 x {trainable / 1e9:.3f} B trainable ({what}) x {nbytes} B{per_shard}",
        )
        concurrent = self.concurrent_updates(plan.device)
        update = "update" if concurrent else f"update of {name}"
        step = "optimiser step" if concurrent else f"optimiser step of {name}"
        passes = self._passes()
        grads_how = f"{trainable / 1e9:.3f} B trainable x {nbytes} B{per_shard}; freed after the optimiser step"
        if passes > 1 or self.lora[i]:
            plan.add(f"gradients ({name})", trainable * nbytes / shards, (update, step), grads_how)
        else:  # one pass: backward makes the gradients as it frees the activations, the output layer's first
            plan.add(f"gradients ({name})", trainable * nbytes / shards, step, grads_how)
            plan.add(
                f"output layer's gradient ({name})",
                model.vocab * model.hidden * nbytes,
                update,
                f"{model.vocab} vocab x {model.hidden} hidden x {nbytes} B: the update is one pass, and backward "
                "makes this gradient first, while the activations are alive; the rest come as they go",
            )
        activations, rows, how = self._micro_batch(i)
        plan.add(f"activations ({name})", activations, update, how)
        logits, logits_how = self._logits(model, rows)
        plan.add(f"logits ({name})", logits, update, logits_how)
        if self.casts:
            kept = (
                "a frozen weight's cast is kept for backward in each pass"
                if self.lora[i]
                else "torch.autocast keeps each trained weight's cast for the whole update"
            )
            plan.add(
                f"autocast weight copies ({name})",
                model.params * self.c,
                update,
                f"{model.params / 1e9:.3f} B x {self.c} B ({self.autocast}): {kept}"
                + (" (sharded: planned whole, not measured)" if shards > 1 else ""),
            )
        if plan.device.is_gpu:
            plan.add(
                f"AdamW step temporaries ({name})",
                trainable * nbytes / shards,
                step,
                "one more copy of the trainable weights (the foreach AdamW's sqrt of the second moment)",
            )
        else:
            plan.add(
                f"AdamW step temporaries ({name})",
                2 * (model.largest_tensor if not self.lora[i] else cfg.lora_r * model.intermediate) * nbytes,
                step,
                "two copies of the largest tensor (AdamW steps one tensor at a time on a CPU)",
            )

    def _reference_terms(self, plan: DevicePlan) -> None:
        for i, model in enumerate(self.models):
            where = self.cfg.reference_device or self.placement.agent_devices[i]
            if not self.lora[i] and where == plan.device.name:
                plan.add(
                    f"reference copy (agent_{i})",
                    model.params * self.w,
                    HELD,
                    f"beta > 0: a frozen copy of the initial weights, {model.params / 1e9:.3f} B x {self.w} B",
                )

    # -------------------------------------------------------------- the update
    def _passes(self) -> int:
        """Forward and backward passes of one agent's update: micro-batches of every turn, each iteration."""
        cfg = self.cfg
        rows = [cfg.batch_size * nodes * self.rows_per_node for nodes in self.rollout_plan.nodes_per_turn]
        return cfg.num_iterations * sum(-(-r // cfg.update_micro_batch_size) for r in rows)

    def _micro_batch(self, i: int) -> tuple[int, int, str]:
        """The largest micro-batch's activations: (bytes, rows, how)."""
        model, cfg = self.models[i], self.cfg
        shared_ok = cfg.share_prompt_in_update and not cfg.gradient_checkpointing
        best: tuple[int, int, str] = (0, 0, "")
        for t, nodes in enumerate(self.rollout_plan.nodes_per_turn, start=1):
            rows_t = cfg.batch_size * nodes * self.rows_per_node
            prompt, completion = self._prompt(t), cfg.longest_completion()
            for start in range(0, rows_t, cfg.update_micro_batch_size):
                rows = min(cfg.update_micro_batch_size, rows_t - start)
                group = self.rows_per_prompt
                prompts = (start + rows - 1) // group - start // group + 1
                activations = activation_bytes(
                    model,
                    rows=rows,
                    prompts=prompts if shared_ok and prompts < rows else None,
                    prompt=prompt,
                    completion=completion,
                    weight_bytes=self.w,
                    compute_bytes=self.c,
                    autocast=self.casts,
                    lora_targets=cfg.lora_target_modules if self.lora[i] else None,
                    lora_rank=cfg.lora_r,
                    checkpointing=cfg.gradient_checkpointing,
                )
                if activations.total > best[0]:
                    best = (activations.total, rows, f"turn {t}: {activations.how}")
        return best

    def _logits(self, model: ModelShape, rows: int) -> tuple[int, str]:
        completion, c = self.cfg.longest_completion(), self.c
        chunk = min(self.cfg.logprob_chunk_size or completion, completion)
        full = rows * completion * model.vocab
        part = rows * chunk * model.vocab
        cast = 4 if c != 4 else 0
        nbytes = full * 2 * c + part * (8 + cast)
        return nbytes, (
            f"{rows} rows x {completion} positions x {model.vocab} vocab x {c} B x 2 (the logits and their gradient) "
            f"+ the float32 log-softmax of one chunk of {chunk} positions x {8 + cast} B (its exp for the gradient"
            + (", the float32 cast" if cast else "")
            + ")"
        )


def activation_bytes(
    model: ModelShape,
    *,
    rows: int,
    prompts: int | None,
    prompt: int,
    completion: int,
    weight_bytes: int,
    compute_bytes: int,
    autocast: bool,
    lora_targets: str | Sequence[str] | None = None,
    lora_rank: int = 0,
    checkpointing: bool = False,
) -> Activations:
    """What autograd keeps for backward in one micro-batch's forward pass, and how it is counted.

    ``prompts``: the distinct prompts run once each (share_prompt_in_update), None: each of the
    ``rows`` runs its prompt. ``autocast``: the passes run under autocast over weights of another
    dtype, so that every linear layer casts its input. Queries are the positions a pass
    computes, keys those it attends to: shared, the prompts' positions once and each row's
    completion attending to its whole prompt; plain, every row's prompt and completion. Per
    layer (transformers' Llama/Qwen decoder layer, an attention mask present, so grouped keys and
    values are repeated to every head):

    * per query position: each of the 2 RMSNorms keeps its input in float32 (4 h B) and, where its
      weight trains, its normalised output (h x weight bytes); the linear layers keep their inputs
      (one per norm without autocast, in the weights' dtype; under autocast each linear its own
      cast: 5 x h x compute bytes); attention keeps the queries and its output (2 x heads x head
      dim) and its logsumexp (heads x 4 B); the MLP 4 x intermediate (gate, its activation, up and
      down's input; 3 where down_proj is frozen); Qwen3's query and key norms their inputs and outputs;
      a LoRA adapter its rank-wide down-projection (and, under autocast, o_proj's input recast);
    * per key position: the keys and values repeated to every head (2 x heads x head dim);
    * the attention mask, which scaled_dot_product_attention converts from bool to the compute
      dtype in every layer and keeps: queries x keys of each row (of each prompt, shared).

    Plus, once: the final norm and the output layer's input, and, shared, the per-row gathered
    prompt keys and values of every layer (alive until the forward pass ends). With gradient
    checkpointing only each layer's input is kept, and one layer's activations while it is recomputed.
    """
    h, i, q, kv = model.hidden, model.intermediate, model.q_dim, model.kv_dim
    w, c = weight_bytes, compute_bytes
    lora = lora_targets is not None
    targets = set(LINEARS if lora_targets == "all-linear" else _as_list(lora_targets or LINEARS))
    trains = (lambda name: name in targets) if lora else (lambda name: True)
    norm_out = 0 if lora else w * h  # the normalised output, for the norm weight's gradient
    attention_in = [n for n in ("q_proj", "k_proj", "v_proj") if trains(n)]
    mlp_in = [n for n in ("gate_proj", "up_proj") if trains(n)]
    if autocast:
        linear_inputs = (len(attention_in) + len(mlp_in)) * c * h
    else:
        linear_inputs = (bool(attention_in) + bool(mlp_in)) * w * h
    per_query = 2 * (4 * h + norm_out + 4) + linear_inputs + 2 * q * c + 4 * model.heads
    per_query += (4 if trains("down_proj") else 3) * i * c
    if lora:  # each adapter keeps its down-projection (rank wide); peft recasts o_proj's bf16 input to float32
        per_query += lora_rank * len(targets & set(LINEARS)) * c + (q * c if autocast and trains("o_proj") else 0)
    if model.qk_norm:  # normalised in the queries' and keys' own dtype
        per_query += (4 + (0 if lora else c)) * (q + kv) + 4 * (model.heads + model.kv_heads)
    per_key = 2 * q * c
    if prompts is None:
        queries = keys = rows * (prompt + completion)
        mask = rows * (prompt + completion) ** 2
        gathered = 0
        shape = f"{rows} rows x ({prompt} prompt + {completion} completion) positions"
    else:
        queries = prompts * prompt + rows * (completion - 1)
        keys = prompts * prompt + rows * (prompt + completion - 1)
        mask = prompts * prompt**2 + rows * (completion - 1) * (prompt + completion - 1)
        gathered = model.layers * rows * (prompt + completion) * 2 * kv * c
        shape = f"{prompts} prompts x {prompt} + {rows} rows x {completion} completion positions (prompt shared)"
    tail = queries * (4 + w) * h + rows * completion * c * h  # the final norm, the output layer's input
    layer = queries * per_query + keys * per_key + mask * c
    if checkpointing:
        per_layer, tail = queries * w * h, tail + layer
        formula = f"{model.layers} layers x {queries:,} queries x {w * h:,} B (each layer's input), + one layer's"
    else:
        per_layer = layer
        formula = (
            f"{model.layers} layers x ({queries:,} queries x {per_query:,} B + {keys:,} keys x {per_key:,} B + "
            f"a {mask:,}-entry attention mask x {c} B)"
        )
    how = f"{shape}: {formula}, + the final norm and output layer's inputs" + (
        ", + the gathered prompt keys and values" if gathered else ""
    )
    return Activations(per_layer, model.layers, tail, gathered, how)


@dataclass(frozen=True)
class Activations:
    """One micro-batch's activations: what each decoder layer keeps for backward, what the rest
    keeps (the final norm, the output layer's input; with checkpointing, the layer being
    recomputed), and, prompt shared, every layer's keys and values gathered per row (alive until
    the forward pass ends)."""

    per_layer: int
    layers: int
    tail: int
    gathered: int
    how: str

    @property
    def total(self) -> int:
        return self.per_layer * self.layers + self.tail + self.gathered


def suggest_placements(
    config: MAGRPOConfig,
    models: Sequence[ModelShape],
    gpu: Device,
    workload: Workload,
    counts: Sequence[int] = (1, 2, 4, 8),
) -> list[tuple[int, list[MemoryPlan], MemoryPlan]]:
    """For each GPU count n: the placements magrpo can run on n GPUs like ``gpu``, each planned, and
    the suggested one: the first that fits in the order (1) the team whole on every GPU, n
    replicated ranks (n x the items per step); (2) sharded over the n GPUs (FSDP2; not with vLLM);
    (3) each agent with a model of its own on its own GPU, one process (GPUs beyond them idle).
    Where none fits at the config's update micro-batch, the same order with the micro-batch halved
    until one fits (then that one joins the list); where none fits at all, the lowest peak."""
    out = []
    groups = _Run(config, models, Placement(("cuda:0",) * config.num_agents), {"cuda:0": gpu}, workload).groups
    smaller, micro = [], config.update_micro_batch_size // 2
    while micro >= 1:
        smaller.append(micro)
        micro //= 2
    for n in counts:
        devices = [replace(gpu, name=f"cuda:{k}") for k in range(n)]
        candidates = [Placement(("cuda:0",) * config.num_agents, ranks=n)]
        if n > 1 and config.rollout_backend != "vllm" and config.algorithm == "magrpo":
            candidates.append(Placement(("cuda:0",) * config.num_agents, ranks=n, shard=True))
        if 1 < len(groups) <= n:
            where = ["cuda:0"] * config.num_agents
            for k, group in enumerate(groups):
                for i in group:
                    where[i] = f"cuda:{k}"
            candidates.append(Placement(tuple(where)))
        plans = [plan_memory(for_placement(config, p), models, devices, workload, p) for p in candidates]
        chosen = next((p for p in plans if p.fits), None)
        for micro in smaller if chosen is None else ():
            tried = [replace(p, micro_batch=micro) for p in candidates]
            chosen = next(
                (
                    q
                    for q in (plan_memory(for_placement(config, p), models, devices, workload, p) for p in tried)
                    if q.fits
                ),
                None,
            )
            if chosen is not None:
                plans.append(chosen)
                break
        out.append((n, plans, chosen or min(plans, key=lambda p: p.peak)))
    return out


def for_placement(config: MAGRPOConfig, placement: Placement) -> MAGRPOConfig:
    """``config`` as a run of ``placement`` would take it (sharding, agent devices)."""
    several = len(set(placement.agent_devices)) > 1
    return replace(
        config,
        update_micro_batch_size=placement.micro_batch or config.update_micro_batch_size,
        data_parallel="shard" if placement.shard else "replicate",
        agent_devices=list(placement.agent_devices) if several else None,
        rollout_dtype="auto" if placement.shard and config.rollout_dtype != "same" else config.rollout_dtype,
    )


__all__ = [
    "BYTES",
    "CPU_OVERHEAD",
    "GPU_OVERHEAD",
    "HELD",
    "KNOWN_MODELS",
    "GiB",
    "Device",
    "DevicePlan",
    "MemoryPlan",
    "ModelShape",
    "Placement",
    "Term",
    "Workload",
    "Activations",
    "activation_bytes",
    "for_placement",
    "host_memory",
    "model_shape",
    "parse_devices",
    "parse_size",
    "plan_memory",
    "suggest_placements",
    "this_machine",
]
