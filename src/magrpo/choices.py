"""The accepted values of every choice, in one place: the config checks them when it is built,
and the functions that take them check against the same tuples."""

from __future__ import annotations

from typing import Sequence

from magrpo.errors import ConfigError

#: how advantages are made: the group baseline (MAGRPO), a critic's (magrpo.critics), the DPO
#: weights of the node's preference pairs (MADPO, magrpo.preference), or the group baseline over
#: a reward model learnt from those pairs (MARLHF, magrpo.learned_reward)
ALGORITHMS = ("magrpo", "iac", "maac", "madpo", "marlhf")
#: the algorithms that pair a node's joint actions by their returns
PREFERENCE_ALGORITHMS = ("madpo", "marlhf")
#: the algorithms whose baseline is a critic
CRITIC_ALGORITHMS = ("iac", "maac")
#: MADPO: which of a node's ordered pairs of joint actions are kept (magrpo.preference.preference_pairs)
PAIR_SELECTIONS = ("reward_gap", "all", "random")
#: MADPO with a comparator: the same, and CoMLRL's "comparator_reward" (the pairs whose comparator
#: reward is highest first; magrpo.comparator.comparator_pairs)
COMPARATOR_PAIR_SELECTIONS = (*PAIR_SELECTIONS, "comparator_reward")
#: MADPO: whose joint actions the team's are paired with: its own ("current"), those its frozen
#: initial policy samples on the same observations ("frozen"), or those of a team saved in a
#: folder (MODEL_COMPARATOR followed by the folder; magrpo.comparator)
PREFERENCE_COMPARATORS = ("current", "frozen")
MODEL_COMPARATOR = "model:"
#: CoMLRL's other comparators, refused by name until built (docs/preference.md, "Not yet here")
COMPARATORS_NOT_BUILT = ("current_copy", "history", "api")
#: MADPO: each agent's DPO logit: the team's summed margins ("joint") or its own ("own")
PREFERENCE_LOSSES = ("joint", "own")
#: MADPO: the DPO margins' reference: the agent's initial policy, or none (the policy's alone)
PREFERENCE_REFERENCES = ("initial", "none")
#: what a run writes to disk (TRL's save_strategy, by steps or not at all)
SAVE_STRATEGIES = ("steps", "no")
#: what a critic values: the observation, V(s), or the observation and the action taken, Q(s, a)
CRITIC_TYPES = ("v", "q")
ADVANTAGE_SCALINGS = ("none", "std")
ADVANTAGE_BASELINES = ("mean", "loo", "max", "none")
#: the loss type (magrpo.loss.LOSS_TYPE_TABLE: its normaliser, row scale and surrogate): ours
#: ("sequence", the paper's; "token") and TRL's
LOSS_TYPES = ("sequence", "token", "grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")
#: the loss types whose surrogate is PPO's clip (the others: cispo, sapo, vespo), which delta caps
CLIPPED_LOSS_TYPES = ("sequence", "token", "grpo", "dr_grpo", "dapo", "bnpo", "luspo")
#: the old name's values (loss_aggregation), each still a loss_type
LOSS_AGGREGATIONS = ("sequence", "token")
#: where the clipped ratio pi / pi_old is taken: per token (PPO, GRPO) or per completion (GSPO)
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")
#: how the sampler correction pi_old / pi_sampler is taken (TRL's vllm_importance_sampling_mode):
#: per token or per completion, truncated to its bounds or masked (0) outside them
IMPORTANCE_SAMPLING_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")
#: how several reward functions make one reward (TRL's multi_objective_aggregation)
MULTI_OBJECTIVE_AGGREGATIONS = ("sum_then_normalize", "normalize_then_sum")
#: transformers' get_scheduler names magrpo accepts
LR_SCHEDULERS = (
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "inverse_sqrt",
    "cosine_with_min_lr",
    "warmup_stable_decay",
)
JOINT_MODES = ("aligned", "cross")
#: how the agents of a turn answer: each from its own observation at once, or one after the other
#: (each seeing the earlier agents' answers of the same joint action; magrpo.protocol)
PROTOCOLS = ("simultaneous", "sequential")
#: how each agent's completions are credited: against their node's group, or against the
#: alternatives that share their exact context (magrpo.advantages.contextual_advantages)
CREDITS = ("group", "counterfactual")
CROSS_AGGREGATIONS = ("mean", "max")
EXPANSIONS = ("full", "best-k")
#: the samplers; a run may also ask for "auto" (the trainer picks one: magrpo.prepare)
SAMPLERS = ("fast", "plain", "vllm")
ROLLOUT_BACKENDS = (*SAMPLERS, "auto")
#: where the vLLM engines live (magrpo.sampling.vllm_engine.own_engine_processes)
VLLM_ENGINE_PROCESSES = ("auto", "training", "own")
#: whose engines sample for the vllm backend: the trainer's own, or a rollout server's
VLLM_MODES = ("colocate", "server")
ROLLOUT_DTYPES = ("auto", "same", "float32", "bfloat16", "float16")
AUTOCASTS = ("auto", "no", "bfloat16", "float16")
DTYPES = ("auto", "float32", "bfloat16", "float16")
REPORT_TO = ("tensorboard", "wandb", "mlflow")
#: the prompt-only set-ups a trained team is compared with (magrpo.eval.setups)
SETUPS = ("single", "parallel", "sequential", "discussion")
DATA_PARALLEL = ("replicate", "shard")


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``, else a :class:`ConfigError` naming both."""
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not valid; choose one of {', '.join(map(repr, choices))}")
    return value  # type: ignore[return-value]


__all__ = [
    "ADVANTAGE_BASELINES",
    "ALGORITHMS",
    "CRITIC_ALGORITHMS",
    "SAVE_STRATEGIES",
    "CLIPPED_LOSS_TYPES",
    "COMPARATORS_NOT_BUILT",
    "COMPARATOR_PAIR_SELECTIONS",
    "CRITIC_TYPES",
    "ADVANTAGE_SCALINGS",
    "AUTOCASTS",
    "CROSS_AGGREGATIONS",
    "DATA_PARALLEL",
    "DTYPES",
    "EXPANSIONS",
    "IMPORTANCE_SAMPLING_LEVELS",
    "IMPORTANCE_SAMPLING_MODES",
    "JOINT_MODES",
    "PROTOCOLS",
    "CREDITS",
    "LOSS_AGGREGATIONS",
    "LOSS_TYPES",
    "LR_SCHEDULERS",
    "MODEL_COMPARATOR",
    "MULTI_OBJECTIVE_AGGREGATIONS",
    "PAIR_SELECTIONS",
    "PREFERENCE_COMPARATORS",
    "PREFERENCE_ALGORITHMS",
    "PREFERENCE_LOSSES",
    "PREFERENCE_REFERENCES",
    "ROLLOUT_BACKENDS",
    "SAMPLERS",
    "REPORT_TO",
    "ROLLOUT_DTYPES",
    "VLLM_ENGINE_PROCESSES",
    "VLLM_MODES",
    "SETUPS",
    "check_choice",
]
