"""Setting up a run before its first step: the environments from the user's pieces, the input
checks, the agents, sharding, the precision policy, the sampling copies and the optimisers.

Every check here runs before any compute is spent, so a bad input stops the run at once."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from magrpo import distributed, sharding
from magrpo.baselines import GroupBaseline
from magrpo.choices import CRITIC_ALGORITHMS
from magrpo.comparator import Comparator
from magrpo.config import MAGRPOConfig
from magrpo.critics.baseline import CriticBaseline
from magrpo.critics.critic import make_critics
from magrpo.envs.base import MultiAgentEnv
from magrpo.envs.reward_env import reward_env_factory, scorer_from_reward_funcs
from magrpo.errors import ConfigError, DatasetError
from magrpo.feedback.base import Feedback
from magrpo.grouping import distinct_by_identity
from magrpo.learned_reward import LearnedRewardBaseline, reward_model_body, reward_model_critic
from magrpo.models import AgentPolicy, attach_reference_models, attach_sampling_copies, build_agents
from magrpo.preference import PreferenceBaseline
from magrpo.ranks import OneProcess, ReplicatedRanks, ShardedRanks
from magrpo.rewards.reward_model import RewardModel
from magrpo.sampling.vllm_engine import attach_vllm_engines, unservable_reason, vllm_installed
from magrpo.schedules import make_schedulers
from magrpo.team import Precision, Team
from magrpo.types import Formatter, Scorer

EnvFactory = Callable[[Mapping[str, Any]], MultiAgentEnv]
#: a reward function, a reward model's local folder, or a list of them (weighted by reward_weights)
RewardFuncs = Callable[..., Sequence[float]] | str | Path | Sequence[Callable[..., Sequence[float]] | str | Path]


def build_env_factory(
    args: MAGRPOConfig,
    agent_names: Sequence[str],
    *,
    reward_func: RewardFuncs | None,
    scorer: Scorer | None,
    formatters: Sequence[Formatter] | None,
    env_factory: EnvFactory | None,
    reward_weights: Sequence[float] | None,
    feedback: Feedback | None,
    is_solved: Callable[[Mapping[str, Any]], bool] | None,
    agent_roles: Sequence[str] | None,
    show_earlier_answers: Callable[[Sequence[str], Mapping[str, Any]], str] | None = None,
) -> EnvFactory:
    """item -> environment: the user's own factory, or formatters + reward (functions or a scorer)."""
    n = args.num_agents
    if env_factory is not None:
        if reward_func is not None or scorer is not None:
            raise ConfigError("give either env_factory or reward_func/scorer, not both")
        return env_factory
    if args.num_turns > 1 and feedback is None:
        raise ConfigError(
            f"num_turns={args.num_turns} needs feedback between turns: pass feedback= "
            "(ExecutionFeedback, ReviewerFeedback or CallableFeedback) or an env_factory"
        )
    if (reward_func is None) == (scorer is None):
        raise ConfigError("give exactly one of reward_func or scorer (or an env_factory)")
    if args.multi_objective_aggregation == "normalize_then_sum" and reward_func is None:
        raise ConfigError(
            "multi_objective_aggregation='normalize_then_sum' normalises each reward function's values: give "
            "reward_func (one or several functions), not a scorer"
        )
    if formatters is None or len(formatters) != n:
        got = "none" if formatters is None else len(formatters)
        raise ConfigError(f"formatters: {got} given for num_agents={n}; give one formatter per agent")
    if scorer is None:
        funcs = list(reward_func) if isinstance(reward_func, (list, tuple)) else [reward_func]
        # a path among them is a reward model's local folder (as TRL takes a model in reward_funcs)
        funcs = [RewardModel(f) if isinstance(f, (str, Path)) else f for f in funcs]
        keep_parts = args.multi_objective_aggregation == "normalize_then_sum"
        scorer = scorer_from_reward_funcs(funcs, reward_weights, keep_parts=keep_parts)
    return reward_env_factory(
        formatters,
        scorer,
        agent_names,
        feedback=feedback if args.num_turns > 1 else None,
        is_solved=is_solved,
        agent_roles=agent_roles,
        num_turns=args.num_turns,
        sequential=args.protocol == "sequential",
        show_earlier_answers=show_earlier_answers,
    )


def check_items(formatters: Sequence[Formatter] | None, items: list[dict[str, Any]], what: str) -> None:
    """Format every item once now, so a missing field stops the run before any compute."""
    if not formatters:
        return
    for index, item in enumerate(items):
        for agent, fmt in enumerate(formatters):
            try:
                fmt(item)
            except KeyError as exc:
                raise DatasetError(
                    f"{what}[{index}]: the formatter of agent_{agent} needs field {exc.args[0]!r}, "
                    f"which the item lacks; the item has fields {sorted(item)}"
                ) from exc


def prepare_team(agents: Sequence[Any], args: MAGRPOConfig) -> Team:
    """The agents built (or taken as given), sharded where asked, with their precision policy,
    sampling copies and optimisers. Under torchrun, call it after joining the process group."""
    built = list(agents) if all(isinstance(a, AgentPolicy) for a in agents) else _build(agents, args)
    ranks = _ranks_for(built, args)  # sharding happens here, before the optimisers see the weights
    warn_if_weights_cannot_learn(built)
    backend = choose_rollout_backend(args, built, ranks)
    if backend != args.rollout_backend:  # "auto" resolved: the run's config names what samples
        args = dataclasses.replace(args, rollout_backend=backend)
    precision = resolve_precision(args, built, ranks)
    warn_if_bf16_is_emulated(precision, built)
    # IAC, MAAC: the critics, their models before any engine reserves its share of a GPU
    critics = make_critics(built, args.algorithm, _critic_models(built, args), args.critic_type)
    if args.rollout_backend == "vllm" and args.vllm_mode == "server":  # a rollout server's engines sample
        from magrpo.sampling.vllm_client import attach_remote_engines

        attach_remote_engines(built, args.vllm_server_url, args.vllm_server_timeout)
    elif args.rollout_backend == "vllm":  # the engines sample, in the rollout dtype (or the weights' own)
        attach_vllm_engines(
            built,
            dtype=None if precision.rollout_dtype == "same" else getattr(torch, precision.rollout_dtype),
            max_model_len=args.vllm_max_model_len,
            # a later agent of a sequential team reads the earlier agents' answers of every turn too
            max_new_tokens=args.longest_completion()
            * args.num_turns
            * (args.num_agents if args.protocol == "sequential" else 1),
            seed=args.seed,
            kv_cache_gib=args.vllm_kv_cache_gib,
            gpu_memory_utilization=args.vllm_gpu_memory_utilization,
            sleep_mode=args.vllm_sleep_mode,
            engine_process=args.vllm_engine_process,
            devices=args.vllm_devices,
        )
    elif precision.rollout_dtype != "same":
        dtype = getattr(torch, precision.rollout_dtype)
        if any(agent.model.dtype != dtype for agent in built):  # the same dtype needs no copy: exact
            attach_sampling_copies(built, dtype)
    if args.async_rollouts:  # sampled during the update: by engines of their own, never the trainer's process
        check_engines_apart(built, args)
    # the KL term's, DPO's or the frozen comparator's reference: a full agent's frozen copy (LoRA: its base)
    if args.beta > 0 or args.preference_reference_used() or args.preference_comparator == "frozen":
        if ranks.sharded and any(agent.adapter is None for agent in built):
            raise ConfigError(
                f"beta={args.beta} needs a whole frozen reference copy of every fully trained agent, which "
                "data_parallel='shard' avoids: use LoRA agents (their reference is the base), "
                "or data_parallel='replicate'"
            )
        attach_reference_models(built, args.reference_device)
    optimizers = [
        make_optimizer(agent, args, lr, heads=[c.head for c in critics if c.host == i and c.model is None])
        for i, (agent, lr) in enumerate(zip(built, args.learning_rate_per_agent()))
    ]
    for critic in critics:  # a critic model of its own: its own AdamW over it and its head
        if critic.model is not None:
            critic.optimizer = _adamw(critic.parameters(), args, args.critic_learning_rate)
    # the baseline: the group's (MAGRPO), the critics' (IAC, MAAC), or the preference pairs' (MADPO)
    if critics:
        baseline = CriticBaseline(critics, built, args, precision, ranks)
    elif args.algorithm == "madpo":
        baseline = PreferenceBaseline.from_config(built, args, precision, ranks)
    elif args.algorithm == "marlhf":  # the reward model: a critic model of its own in form
        body = (
            _critic_models(built[:1], args)[0]
            if args.critic_model is not None
            else _build_models([reward_model_body(built)], args, str(built[0].device), False)[0]
        )
        reward_model = reward_model_critic(body)
        reward_model.optimizer = _adamw(reward_model.parameters(), args, args.critic_learning_rate)
        baseline = LearnedRewardBaseline(reward_model, built, args, precision, ranks)
    else:
        baseline = GroupBaseline.from_config(args)
    schedulers = make_schedulers(optimizers, args)
    comparator = Comparator.from_config(built, args)
    return Team(built, optimizers, args, ranks, precision, schedulers, baseline, comparator=comparator)


def check_engines_apart(agents: Sequence[AgentPolicy], args: MAGRPOConfig) -> None:
    """Rollouts sampled during the update need engines that hold their own weights apart from the
    training process (a process of its own, or a rollout server)."""
    if args.rollout_backend != "vllm":
        raise ConfigError(
            f"async_rollouts={args.async_rollouts} needs vLLM engines (rollout_backend resolved to "
            f"{args.rollout_backend!r}: is vLLM installed?): use rollout_backend='vllm'"
        )
    if not all(agent.rollout_engine.own_process for agent in agents):
        raise ConfigError(
            f"async_rollouts={args.async_rollouts} samples while the update runs: the engines must live apart from "
            "the training process: set vllm_engine_process='own', or vllm_mode='server'"
        )


def _critic_models(agents: Sequence[AgentPolicy], args: MAGRPOConfig) -> list[AgentPolicy] | None:
    """IAC, MAAC with ``critic_model``: one model per critic (IAC: each on its agent's device;
    LoRA critics share one base), else None (the heads sit on the agents' models)."""
    if args.algorithm not in CRITIC_ALGORITHMS + ("marlhf",) or args.critic_model is None:
        return None
    hosts = agents if args.algorithm == "iac" else agents[:1]
    devices = sorted({str(agent.device) for agent in hosts})
    if args.critic_use_lora and len(devices) > 1:
        raise ConfigError(
            f"critic_use_lora=True puts the {len(hosts)} IAC critics' adapters on one base model, and their agents "
            f"sit on {', '.join(devices)}: place the agents on one device, or train whole critic models "
            "(critic_use_lora=False)"
        )
    return _build_models(
        [args.critic_model] * len(hosts), args, [str(agent.device) for agent in hosts], args.critic_use_lora
    )


def _build(agents: Sequence[Any], args: MAGRPOConfig) -> list[AgentPolicy]:
    device = list(args.agent_devices) if args.agent_devices else distributed.rank_device(args.device)
    return _build_models(agents, args, device, args.lora_per_agent())


def _build_models(
    specs: Sequence[Any], args: MAGRPOConfig, device: str | Sequence[str], use_lora: bool | Sequence[bool]
) -> list[AgentPolicy]:
    """``build_agents`` with the config's dtype, LoRA shape and gradient checkpointing."""
    return build_agents(
        specs,
        device=device,
        dtype=args.dtype,
        use_lora=use_lora,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        lora_target_modules=args.lora_target_modules,
        gradient_checkpointing=args.gradient_checkpointing,
    )


def _ranks_for(agents: Sequence[AgentPolicy], args: MAGRPOConfig) -> OneProcess:
    """Who the step talks to: nobody (one process), replicated ranks, or sharded ranks, each
    agent's model then split over them (FSDP2) before its optimiser is built on the shards."""
    if not distributed.active():
        return OneProcess()
    if args.data_parallel != "shard":
        return ReplicatedRanks()
    sharding.check_shardable(agents)
    for agent in agents:
        sharding.shard_model(agent.model)
    return ShardedRanks()


def choose_rollout_backend(args: MAGRPOConfig, agents: Sequence[AgentPolicy], ranks: OneProcess) -> str:
    """``rollout_backend`` with "auto" resolved, by what benchmarks/bench_vs_trl.py measured: vllm
    where it is installed and serves the team (not sharded; on CPU a head size its attention
    takes) and is faster: on CUDA always (our decoder is launch-bound there), on CPU where ONE
    engine serves the whole team (one agent, or LoRA agents on one base). Several full agents on
    a CPU keep the fast sampler: their engines, a process and a core each, decoding at once,
    measured x0.99-1.2 its tok/s in bf16 and x0.9 in float32 over two sittings, for twice the
    memory."""
    if args.rollout_backend != "auto":
        return args.rollout_backend
    if args.protocol == "sequential":  # vLLM serves a sequential team when asked by name, not by "auto"
        return "fast"
    if args.preference_comparator != "current":  # the comparator samples with the trainer's own weights
        return "fast"
    if args.vllm_mode == "server":  # a rollout server was named: its engines sample
        return "vllm"
    if ranks.sharded or not vllm_installed() or unservable_reason(agents):
        return "fast"
    if all(agent.device.type == "cuda" for agent in agents):
        return "vllm"
    one_engine = len(distinct_by_identity(agents, key=lambda agent: agent.model)) == 1
    return "vllm" if one_engine else "fast"


def computes_bf16_in_hardware(device: torch.device) -> bool:
    """Whether ``device`` runs bfloat16 matmuls in hardware: a CUDA GPU that supports it, or a CPU
    with AVX-512 BF16 or AMX (elsewhere a CPU emulates bf16, many times slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def bf16_by_default(device: torch.device) -> bool:
    """Whether ``autocast="auto"`` is bf16 on ``device``: on a CUDA GPU that computes bf16 (as
    TRL's ``bf16=True`` recipes), never on a CPU. On a CPU with AVX-512 BF16 the bf16 update was
    x2.5 faster but the team learned less (docs/performance.md, "Precision"), so there bf16 is the
    user's choice (``autocast="bfloat16"``), not the default."""
    return device.type == "cuda" and computes_bf16_in_hardware(device)


def resolve_precision(
    args: MAGRPOConfig,
    agents: Sequence[AgentPolicy],
    ranks: OneProcess,
    bf16_default: Callable[[torch.device], bool] = bf16_by_default,
) -> Precision:
    """``autocast`` and ``rollout_dtype`` with "auto" resolved by the devices: where every agent's
    device takes bf16 by default (:func:`bf16_by_default`: a CUDA GPU), bf16 autocast for the
    update and a bf16 policy to sample with (the fast backend's copy, the vllm engine's dtype), the
    gap closed by the truncated importance weights; float32 throughout elsewhere (every CPU)."""
    bf16 = all(bf16_default(agent.device) for agent in agents)
    autocast = args.autocast
    if autocast == "auto":
        autocast = "bfloat16" if bf16 else "no"
    rollout_dtype = args.rollout_dtype
    if rollout_dtype == "auto":
        # sharded: a whole sampling copy on every rank is what sharding avoids (an engine holds a
        # copy anyway); a float32 update samples with its own weights (exactly on-policy)
        copies = args.rollout_backend == "vllm" or (args.rollout_backend == "fast" and not ranks.sharded)
        rollout_dtype = "bfloat16" if autocast == "bfloat16" and copies else "same"
    return Precision(autocast=None if autocast == "no" else getattr(torch, autocast), rollout_dtype=rollout_dtype)


def warn_if_bf16_is_emulated(
    precision: Precision,
    agents: Sequence[AgentPolicy],
    bf16_in_hardware: Callable[[torch.device], bool] = computes_bf16_in_hardware,
) -> None:
    """Warn where bf16 was asked for on a device that emulates it (a CPU without AVX-512 BF16 or
    AMX: the bundled model's update took x17 the float32 time on an AVX2 CPU)."""
    asked = [
        what
        for what, dtype in (("autocast", precision.autocast), ("rollout_dtype", precision.rollout_dtype))
        if str(dtype).removeprefix("torch.") == "bfloat16"
    ]
    emulated = sorted({str(agent.device) for agent in agents if not bf16_in_hardware(agent.device)})
    if asked and emulated:
        warnings.warn(
            f"{' and '.join(f'{what}=bfloat16' for what in asked)} on {', '.join(emulated)}, which has no bf16 "
            "hardware (no AVX-512 BF16 or AMX): bf16 is emulated there, many times slower than float32 (x17 for the "
            "bundled model's update on an AVX2 CPU); use autocast='no' and rollout_dtype='same' (the CPU default)",
            stacklevel=4,
        )


def warn_if_weights_cannot_learn(agents: Sequence[AgentPolicy]) -> None:
    low = sorted(
        {
            str(p.dtype).removeprefix("torch.")
            for agent in agents
            for p in agent.trainable_parameters()
            if p.dtype in (torch.bfloat16, torch.float16)
        }
    )
    if low:
        warnings.warn(
            f"the trainable weights are {', '.join(low)}: AdamW updates smaller than a weight's rounding step "
            "(about 1/256 of its size in bfloat16) round away, so at lr ~1e-5 most of every update is lost and "
            "the run barely learns; train float32 weights (dtype='auto' or 'float32') with autocast='bfloat16' "
            "for bf16 speed",
            stacklevel=4,
        )


def make_optimizer(
    agent: AgentPolicy, args: MAGRPOConfig, lr: float | None = None, heads: Sequence[torch.nn.Module] = ()
) -> torch.optim.Optimizer:
    """One AdamW per agent, over what that agent trains (its model, or its own adapter), at
    ``lr`` (None: the config's first rate); the value ``heads`` it hosts (IAC, MAAC) are a second
    parameter group at ``critic_learning_rate``."""
    groups = [{"params": agent.trainable_parameters()}]
    groups += [{"params": list(head.parameters()), "lr": args.critic_learning_rate} for head in heads]
    return _adamw(groups, args, args.learning_rate_per_agent()[0] if lr is None else lr)


def _adamw(params: Any, args: MAGRPOConfig, lr: float) -> torch.optim.Optimizer:
    """AdamW over ``params`` (parameters or parameter groups) with the config's betas and weight decay."""
    return torch.optim.AdamW(params, lr=lr, betas=(args.adam_beta1, args.adam_beta2), weight_decay=args.weight_decay)


__all__ = [
    "EnvFactory",
    "RewardFuncs",
    "build_env_factory",
    "check_items",
    "choose_rollout_backend",
    "bf16_by_default",
    "computes_bf16_in_hardware",
    "make_optimizer",
    "prepare_team",
    "resolve_precision",
]
