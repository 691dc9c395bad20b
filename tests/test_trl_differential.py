"""magrpo's loss against TRL's own: ``GRPOTrainer._compute_loss`` and the importance-sampling
block of ``_generate_and_score_completions`` run on the same float64 tensors (the policy's,
pi_old's, the reference's and a sampler's log-probs; masks of different lengths with padding;
advantages of both signs) as :func:`magrpo.objective.policy_loss`. Their gradients agree to
1e-6 relative (in practice to rounding), and so do their values where both define the same one
(the surrogate of several updates; cispo and vespo always; one update's REINFORCE value is the
paper's, TRL's the surrogate's at r = 1). Where magrpo chose otherwise (bnpo over the step, the
entropy quantile over the step) the test names TRL's option that matches.

TRL is the test extra's pinned version; its trainer is built without a model (``__new__``), its
model's forward replaced by the tensors themselves."""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import textwrap
import warnings
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

with warnings.catch_warnings():  # TRL warns about vLLM versions it has not tested
    warnings.simplefilter("ignore")
    trl = pytest.importorskip("trl")
    from trl import GRPOConfig, GRPOTrainer

from magrpo import MAGRPOConfig
from magrpo.loss import LOSS_TYPE_TABLE, high_entropy_masks, loss_normaliser
from magrpo.objective import EntropyBonus, Objective, policy_loss

TRL_LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")
T = 7  # max_new_tokens / max_completion_length
RTOL = 1e-6


# ---------------------------------------------------------------------- the shared tensors
def tensors(seed: int = 0, rows: int = 6):
    """Log-probs of the policy now, pi_old (a little apart: a later update), the reference and a
    sampler (a little apart from pi_old), entropies, masks of lengths 7, 5, 3, 1, 6, 2 with
    padding after them, advantages of both signs (none 0)."""
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(rows, T, generator=g, dtype=torch.float64) * 3 - 0.05
    lp = old + 0.15 * torch.randn(rows, T, generator=g, dtype=torch.float64)
    ref = old + 0.3 * torch.randn(rows, T, generator=g, dtype=torch.float64)
    sampler = old + 0.2 * torch.randn(rows, T, generator=g, dtype=torch.float64)
    entropies = torch.rand(rows, T, generator=g, dtype=torch.float64) * 4
    lengths = torch.tensor([7, 5, 3, 1, 6, 2])[:rows]
    mask = torch.arange(T)[None, :] < lengths[:, None]
    adv = torch.tensor([1.5, -0.7, 0.4, -1.2, 0.9, -0.3], dtype=torch.float64)[:rows]
    return SimpleNamespace(lp=lp, old=old, ref=ref, sampler=sampler, entropies=entropies, mask=mask, adv=adv)


# ---------------------------------------------------------------------- TRL's side
class _OneProcess:
    """The accelerator of one process: every collective is the identity."""

    num_processes = 1
    sync_gradients = True

    def gather(self, x):
        return x

    def gather_for_metrics(self, x):
        return x

    def reduce(self, x, reduction="sum"):
        return x

    def pad_across_processes(self, x, dim=0, pad_index=0):
        return x


def trl_config(accumulation: int = 1, **options) -> GRPOConfig:
    """TRL's config: one generation batch per optimiser step, cut into ``accumulation`` micro-batches."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return GRPOConfig(
            output_dir="unused",
            use_cpu=True,
            bf16=False,
            report_to=[],
            per_device_train_batch_size=2,
            num_generations=2,
            max_completion_length=T,
            gradient_accumulation_steps=accumulation,
            **options,
        )


def trl_trainer(config: GRPOConfig, accumulation: int) -> GRPOTrainer:
    """A GRPOTrainer with the attributes its ``__init__`` sets for ``_compute_loss``, no model."""
    trainer = GRPOTrainer.__new__(GRPOTrainer)
    trainer.args = config
    trainer.accelerator = _OneProcess()
    trainer.model = SimpleNamespace(training=True)
    trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    trainer.current_gradient_accumulation_steps = accumulation
    for name in (
        "loss_type",
        "beta",
        "num_iterations",
        "importance_sampling_level",
        "off_policy_mask_threshold",
        "top_entropy_quantile",
        "entropy_coef",
        "use_adaptive_entropy",
        "use_vllm",
        "vllm_importance_sampling_correction",
        "vllm_importance_sampling_mode",
        "vllm_importance_sampling_clip_min",
        "vllm_importance_sampling_clip_max",
        "max_completion_length",
    ):
        setattr(trainer, name, getattr(config, name))
    trainer.epsilon_low = config.epsilon
    trainer.epsilon_high = config.epsilon_high if config.epsilon_high is not None else config.epsilon
    trainer._entropy_bonus_enabled = config.entropy_coef != 0.0 or config.use_adaptive_entropy
    trainer._last_world_entropy = float("inf")
    trainer._entropy_window_stats = None
    trainer.aux_loss_enabled = False
    return trainer


def trl_importance_sampling_block():
    """The lines of TRL's ``_generate_and_score_completions`` that turn pi_old and the sampler's
    log-probs into ``vllm_importance_sampling_ratio``, as a function of those tensors."""
    source = inspect.getsource(GRPOTrainer._generate_and_score_completions).splitlines()
    start = next(i for i, line in enumerate(source) if "per_token_logps_diff = (old_per_token_logps" in line) - 2
    end = next(i for i in range(start, len(source)) if "per-token log probabilities for the reference" in source[i])
    block = textwrap.dedent("\n".join(source[start:end]))
    assert block.startswith("if self.use_vllm and self.vllm_importance_sampling_correction:"), block[:200]
    code = compile(block, "trl-importance-sampling", "exec")

    def ratio(trainer, old, sampler, mask):
        scope = {"self": trainer, "old_per_token_logps": old, "sampling_per_token_logps": sampler,
                 "completion_mask": mask, "tool_mask": None, "torch": torch, "math": math}  # fmt: skip
        exec(code, scope)
        return scope["vllm_importance_sampling_ratio"]

    return ratio


IS_BLOCK = trl_importance_sampling_block()


def trl_loss_and_grads(case, x, micro_batches):
    """TRL's summed loss over the micro-batches (gradient accumulation) and the gradients of the
    policy's log-probs and of the entropies."""
    config = trl_config(len(micro_batches), **case.trl_options())
    trainer = trl_trainer(config, accumulation=len(micro_batches))
    lp, entropies = x.lp.clone().requires_grad_(), x.entropies.clone().requires_grad_()
    total = 0.0
    num_items = torch.tensor(float(x.mask.sum()))
    for rows in micro_batches:
        sub_lp, sub_entropies = lp[rows], entropies[rows]
        trainer._get_per_token_logps_and_entropies = lambda *a, _l=sub_lp, _e=sub_entropies, **k: (_l, _e, None)
        mask = x.mask[rows].long()
        inputs = {
            "prompt_ids": torch.zeros(len(rows), 0, dtype=torch.long),
            "prompt_mask": torch.zeros(len(rows), 0, dtype=torch.long),
            "completion_ids": torch.zeros(len(rows), T, dtype=torch.long),
            "completion_mask": mask,
            "advantages": x.adv[rows],
            "num_items_in_batch": num_items,
        }
        old = x.old[rows] if case.iterations > 1 else x.lp[rows].detach().clone()
        if case.iterations > 1 or case.sampler:
            inputs["old_per_token_logps"] = old  # TRL scores pi_old for several updates and for vLLM
        if case.beta:
            inputs["ref_per_token_logps"] = x.ref[rows]
        if case.sampler:
            inputs["sampling_per_token_logps"] = x.sampler[rows]
            inputs["importance_sampling_ratio"] = IS_BLOCK(trainer, old, x.sampler[rows], mask)
        loss = trainer._compute_loss(None, inputs)
        loss.backward()
        total += float(loss.detach())
    return total, lp.grad, entropies.grad


# ---------------------------------------------------------------------- magrpo's side
def magrpo_loss_and_grads(case, x, micro_batches):
    """magrpo's loss over the same micro-batches: each divided by the step's normaliser N."""
    args = MAGRPOConfig(**case.magrpo_options())
    objective = Objective.from_config(args)
    lp, entropies = x.lp.clone().requires_grad_(), x.entropies.clone().requires_grad_()
    n = loss_normaliser(x.mask, objective.loss_type, T)
    entropy_masks = [None] * len(micro_batches)
    if objective.needs_entropy_mask:  # over the step, from the entropies of the weights that sampled
        entropy_masks = high_entropy_masks(
            [x.entropies[r] for r in micro_batches], [x.mask[r] for r in micro_batches], args.top_entropy_quantile
        )
    acting = sum(float((x.mask[r] if m is None else m).sum()) for r, m in zip(micro_batches, entropy_masks))
    total = 0.0
    for rows, entropy_mask in zip(micro_batches, entropy_masks):
        bonus = EntropyBonus(args.entropy_coef, acting, entropies[rows]) if objective.has_entropy_bonus else None
        loss, _ = policy_loss(
            objective,
            lp[rows],
            x.mask[rows],
            x.adv[rows],
            normaliser=n,
            old_logprobs=x.old[rows] if case.iterations > 1 else None,
            ref_logprobs=x.ref[rows] if case.beta else None,
            sampler_logprobs=x.sampler[rows] if case.sampler else None,
            entropy_mask=entropy_mask,
            entropy_bonus=bonus,
        )
        loss.backward()
        total += float(loss.detach())
    return total, lp.grad, entropies.grad


@dataclasses.dataclass
class Case:
    loss_type: str
    iterations: int = 1
    level: str = "token"
    beta: float = 0.0
    sampler: bool = False
    split: int = 1
    options: dict = dataclasses.field(default_factory=dict)  # the same name and value on both sides
    trl_only: dict = dataclasses.field(default_factory=dict)
    magrpo_only: dict = dataclasses.field(default_factory=dict)

    def shared(self):
        return {
            "num_iterations": self.iterations,
            "importance_sampling_level": self.level,
            "beta": self.beta,
            "loss_type": self.loss_type,
            "vllm_importance_sampling_mode": "token_truncate",  # ours; TRL's default is "sequence_mask"
            **self.options,
        }

    def trl_options(self):
        return {"use_vllm": self.sampler, "vllm_importance_sampling_correction": self.sampler, **self.shared(),
                **self.trl_only}  # fmt: skip

    def magrpo_options(self):
        # the sampler's truncation as TRL's vllm_importance_sampling_clip_max, here rollout_is_cap
        return {"max_new_tokens": T, "rollout_is_cap": 3.0, **self.shared(), **self.magrpo_only}

    def micro_batches(self, rows: int):
        return [torch.arange(rows)] if self.split == 1 else list(torch.arange(rows).chunk(self.split))

    def same_value(self) -> bool:
        """One update's REINFORCE value and TRL's surrogate at r = 1 differ by design, except for the
        types whose loss is already -w A log pi (cispo, vespo)."""
        return self.iterations > 1 or LOSS_TYPE_TABLE[self.loss_type].surrogate in ("cispo", "vespo")


def worst_relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs() / b.abs().clamp(min=1e-12)).max())


def assert_agree(case: Case, seed: int = 0) -> dict[str, float]:
    x = tensors(seed)
    batches = case.micro_batches(len(x.adv))
    theirs, their_grad, their_entropy_grad = trl_loss_and_grads(case, x, batches)
    ours, our_grad, our_entropy_grad = magrpo_loss_and_grads(case, x, batches)
    scale = their_grad.abs().max()
    assert scale > 0
    # padding: neither side sends it any gradient
    assert torch.all(our_grad[~x.mask] == 0) and torch.all(their_grad[~x.mask] == 0)
    difference = float((our_grad - their_grad).abs().max() / scale)
    assert difference <= RTOL, (case, difference, our_grad, their_grad)
    worst = {"gradient": difference}
    if their_entropy_grad is not None or our_entropy_grad is not None:
        entropy_difference = float((our_entropy_grad - their_entropy_grad).abs().max() / their_entropy_grad.abs().max())
        assert entropy_difference <= RTOL, (case, our_entropy_grad, their_entropy_grad)
        worst["entropy_gradient"] = entropy_difference
    if case.same_value():
        value_difference = abs(ours - theirs) / max(abs(theirs), 1e-12)
        assert value_difference <= RTOL, (case, ours, theirs)
        worst["value"] = value_difference
    return worst


# ---------------------------------------------------------------------- the grid
GRID = [
    Case(loss_type, iterations, level, beta, sampler, split)
    for loss_type in TRL_LOSS_TYPES
    for iterations in (1, 3)
    for level in ("token", "sequence")
    for beta in (0.0, 0.04)
    for sampler in (False, True)
    for split in (1, 2)
    if not (loss_type == "bnpo" and split > 1)  # a documented choice: the next test
]


def case_id(case: Case) -> str:
    return (
        f"{case.loss_type}-mu{case.iterations}-{case.level}-beta{case.beta}-"
        f"{'sampler' if case.sampler else 'nosampler'}-{case.split}mb"
    )


@pytest.mark.parametrize("case", GRID, ids=case_id)
def test_every_shared_configuration_has_trls_gradient_and_value(case):
    assert_agree(case)


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("iterations", [1, 3])
def test_bnpo_normalises_over_the_step_which_is_trls_dapo_when_split(iterations, level):
    """TRL's bnpo divides each micro-batch by its own tokens; magrpo's batch is the step, so its
    bnpo is TRL's dapo (the step's tokens) whatever the split, and TRL's bnpo with one micro-batch."""
    assert_agree(Case("bnpo", iterations, level, split=1))
    case = Case("bnpo", iterations, level, split=2, trl_only={"loss_type": "dapo"})
    assert_agree(case)


@pytest.mark.parametrize("ours, theirs", [("sequence", "luspo"), ("token", "dapo")])
@pytest.mark.parametrize("iterations", [1, 3])
def test_magrpos_own_loss_types_are_trls_luspo_and_dapo(ours, theirs, iterations):
    """The paper's "sequence" (A times each completion's summed log-probs over S) aggregates as
    LUSPO does; "token" as DAPO."""
    assert_agree(Case(ours, iterations, "token", beta=0.04, sampler=True, split=2, trl_only={"loss_type": theirs}))


@pytest.mark.parametrize("mode", ["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"])
@pytest.mark.parametrize("loss_type", TRL_LOSS_TYPES)
@pytest.mark.parametrize("iterations", [1, 3])
def test_every_importance_sampling_mode_is_trls(mode, loss_type, iterations):
    if loss_type == "vespo" and mode.startswith("sequence"):  # TRL raises in its __init__, magrpo's config
        with pytest.raises(Exception, match=f"loss_type='vespo' folds .* vllm_importance_sampling_mode='{mode}'"):
            MAGRPOConfig(loss_type="vespo", vllm_importance_sampling_mode=mode)
        return
    # bounds that bite: the sampler's ratios spread around 1
    options = {"vllm_importance_sampling_mode": mode, "vllm_importance_sampling_clip_min": 0.8}
    case = Case(
        loss_type,
        iterations,
        "sequence" if loss_type == "luspo" else "token",
        sampler=True,
        split=2 if loss_type != "bnpo" else 1,
        options=options,
        trl_only={"vllm_importance_sampling_clip_max": 1.25},
        magrpo_only={"rollout_is_cap": 1.25},
    )
    assert_agree(case)


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("iterations", [1, 3])
@pytest.mark.parametrize("loss_type", TRL_LOSS_TYPES)
def test_the_bias_corrected_kl_is_trls_on_and_off(loss_type, iterations, level):
    for on in (True, False):
        assert_agree(Case(loss_type, iterations, level, beta=0.1, options={"use_bias_correction_kl": on}))


@pytest.mark.parametrize("iterations", [1, 3])
@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo", "luspo"])
def test_delta_caps_the_ratio_as_trls(loss_type, iterations):
    assert_agree(Case(loss_type, iterations, beta=0.04, sampler=True, options={"delta": 1.1, "epsilon": 0.1}))


@pytest.mark.parametrize("iterations", [1, 3])
@pytest.mark.parametrize("loss_type", TRL_LOSS_TYPES)
@pytest.mark.parametrize("sampler", [False, True])
def test_the_off_policy_mask_is_trls(loss_type, iterations, sampler):
    level = "sequence" if loss_type == "luspo" else "token"
    threshold = {"off_policy_mask_threshold": 0.01}  # low: some completions with A < 0 are dropped
    assert_agree(Case(loss_type, iterations, level, sampler=sampler, split=2 if loss_type != "bnpo" else 1,
                      options=threshold))  # fmt: skip


@pytest.mark.parametrize("iterations", [1, 3])
@pytest.mark.parametrize("loss_type", TRL_LOSS_TYPES)
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_the_top_entropy_quantile_is_trls_over_one_micro_batch(loss_type, iterations, level):
    """TRL takes the quantile over each micro-batch's tokens and the entropies of the weights being
    trained; magrpo over the step's, under the weights that sampled (a micro-batch never changes
    the result): the same with one micro-batch at the first update (pi = pi_old), which here is
    what the tensors give."""
    assert_agree(Case(loss_type, iterations, level, beta=0.04, sampler=True,
                      options={"top_entropy_quantile": 0.4}))  # fmt: skip


@pytest.mark.parametrize("iterations", [1, 3])
@pytest.mark.parametrize("loss_type", TRL_LOSS_TYPES)
def test_the_entropy_bonus_is_trls(loss_type, iterations):
    assert_agree(Case(loss_type, iterations, "token", beta=0.04, options={"entropy_coef": 0.3}))
    assert_agree(Case(loss_type, iterations, "token", options={"entropy_coef": 0.3, "top_entropy_quantile": 0.5}))


@pytest.mark.parametrize(
    "options",
    [
        {"sapo_temperature_pos": 2.0, "sapo_temperature_neg": 0.5},
        {"vespo_k_pos": 1.0, "vespo_lambda_pos": 1.5, "vespo_k_neg": 2.5, "vespo_lambda_neg": 0.7},
        {"epsilon": 0.1, "epsilon_high": 0.15},
        {"epsilon": 0.1, "epsilon_high": 5.0},  # cispo's recommended cap
    ],
)
@pytest.mark.parametrize("loss_type", ["sapo", "vespo", "cispo", "grpo"])
def test_each_loss_types_own_knobs_are_trls(loss_type, options):
    assert_agree(Case(loss_type, 3, "token", beta=0.04, sampler=True, split=2, options=options))
    assert_agree(Case(loss_type, 1, "sequence", sampler=True, options=options))


# ---------------------------------------------------------------------- one update is the first of several
@pytest.mark.parametrize("loss_type", sorted(LOSS_TYPE_TABLE))
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("sampler", [False, True])
@pytest.mark.parametrize("extra", [{}, {"beta": 0.04}, {"off_policy_mask_threshold": 0.01}])
def test_one_update_has_the_gradient_of_the_first_of_several(loss_type, level, sampler, extra):
    """num_iterations=1 against num_iterations=3 with pi_old = pi (its first update), on magrpo's
    side alone: the same gradient, whatever the loss type, level, sampler correction and masks."""
    x = tensors(3)
    x.old = x.lp.detach().clone()
    mode = "sequence_truncate" if loss_type != "vespo" and level == "sequence" else "token_truncate"

    def grad(iterations):
        case = Case(loss_type, iterations, level, sampler=sampler, split=2,
                    magrpo_only={"vllm_importance_sampling_mode": mode, **extra})  # fmt: skip
        return magrpo_loss_and_grads(case, x, case.micro_batches(len(x.adv)))[1]

    one, first = grad(1), grad(3)
    assert float((one - first).abs().max() / first.abs().max()) <= 1e-12


def test_the_sequence_level_sampler_correction_reaches_each_token_as_its_completions_mean():
    """The disagreement this suite found: one update at the sequence level with a sampler
    correction. Each counted token's gradient is -A times the mean of its completion's weights
    (over N = S here), not its own weight."""
    lp = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    # pi_old / pi_sampler = [2, 0.5, (padding)] and [1, 1, 3]: means 1.25 and 5/3
    sampler = -torch.tensor([[2.0, 0.5, 1.0], [1.0, 1.0, 3.0]], dtype=torch.float64).log()
    objective = Objective.from_config(MAGRPOConfig(importance_sampling_level="sequence"))
    loss, figures = policy_loss(
        objective, lp, mask, torch.tensor([1.0, -2.0]), normaliser=2.0, sampler_logprobs=sampler
    )
    loss.backward()
    expected = torch.tensor([[-1.25 / 2, -1.25 / 2, 0.0], [5 / 3, 5 / 3, 5 / 3]], dtype=torch.float64)
    assert torch.allclose(lp.grad, expected, rtol=1e-15, atol=0)
    assert figures.figures()["is_weight_mean"] == pytest.approx((2 + 0.5 + 1 + 1 + 3) / 5)


# ---------------------------------------------------------------------- several reward functions
def trl_reward_aggregation_block():
    """The lines of TRL's ``_generate_and_score_completions`` that aggregate several reward
    functions' values into ``rewards`` (and the advantages), as a function of those values."""
    source = inspect.getsource(GRPOTrainer._generate_and_score_completions).splitlines()
    start = next(i for i, line in enumerate(source) if 'if self.multi_objective_aggregation == "sum_then' in line)
    end = next(i for i in range(start, len(source)) if "Unscorable completions" in source[i])
    code = compile(textwrap.dedent("\n".join(source[start:end])), "trl-reward-aggregation", "exec")

    def aggregate(mode, values, weights, generations):
        from trl.trainer.utils import nanstd

        trainer = SimpleNamespace(
            multi_objective_aggregation=mode,
            reward_weights=torch.tensor(weights, dtype=torch.float64),
            scale_rewards="group",
            reward_funcs=[None] * len(weights),
        )
        scope = {"self": trainer, "rewards_per_func": values, "num_generations": generations, "torch": torch,
                 "unscorable_mask": torch.zeros(len(values), dtype=torch.bool), "device": "cpu", "nanstd": nanstd}  # fmt: skip
        exec(code, scope)
        return scope["rewards"]

    return aggregate


@pytest.mark.parametrize("mode", ["sum_then_normalize", "normalize_then_sum"])
def test_several_reward_functions_make_trls_rewards(mode):
    """Three nodes of four joint actions, two reward functions of weights 1 and -0.5: the rewards
    the team learns from are those TRL's aggregation makes of them (before TRL's own advantages)."""
    from magrpo.envs.base import StepResult
    from magrpo.rewards.aggregation import normalize_then_sum

    g = torch.Generator().manual_seed(5)
    values = torch.randint(0, 4, (12, 2), generator=g).double()
    values[4:8, 0] = 2.0  # a node where one function ties
    weights = [1.0, -0.5]
    theirs = trl_reward_aggregation_block()(mode, values, weights, generations=4)

    def result(v):
        row = {"reward": float(v[0] * weights[0] + v[1] * weights[1]), "reward/f": float(v[0]), "reward/g": float(v[1])}
        return StepResult({}, {"agent_0": row["reward"]}, {}, {}, {"agent_0": row})

    results = [[result(values[p * 4 + j]) for j in range(4)] for p in range(3)]
    if mode == "normalize_then_sum":
        ours = normalize_then_sum(results, [("f", 1.0), ("g", -0.5)]).flatten()
    else:
        ours = torch.tensor([r.joint_reward for node in results for r in node], dtype=torch.float64)
    # TRL's nanstd takes its Bessel factor count / (count - 1) in float32: 2e-8 apart, rounding
    assert float((ours - theirs).abs().max()) <= 1e-6 * float(theirs.abs().max()), ours - theirs


# ---------------------------------------------------------------------- the migration table
def test_the_migration_table_covers_every_grpo_config_field():
    """docs/objective.md's table from TRL's GRPOConfig names every one of its fields (its own and
    those it inherits from transformers' TrainingArguments) in backticks."""
    doc = (Path(__file__).parent.parent / "docs" / "objective.md").read_text()
    table = doc[doc.index("## From TRL's GRPOConfig") :]
    rows = [line for line in table.splitlines() if line.startswith("|")]
    named = {name for row in rows for name in re.findall(r"`([a-z0-9_]+)`", row.split("|")[1])}
    fields = {f.name for f in dataclasses.fields(GRPOConfig)}
    assert sorted(fields - named) == []


# ---------------------------------------------------------------------- state across optimiser steps
def test_sync_ref_model_mixes_as_trls_callback():
    from trl.trainer.callbacks import SyncRefModelCallback

    from magrpo.models.agent import AgentPolicy

    g = torch.Generator().manual_seed(1)
    policy = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)).double()
    for p in policy.parameters():
        p.data = torch.randn(p.shape, generator=g, dtype=torch.float64)
    reference = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in policy.parameters()]
    theirs = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)).double()
    ours = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)).double()
    for t, o, r in zip(theirs.parameters(), ours.parameters(), reference):
        t.data, o.data = r.clone(), r.clone()
    SyncRefModelCallback._sync_target_model(policy, theirs, 0.6)
    AgentPolicy("agent_0", policy, None, reference_model=ours).mix_into_reference(0.6)
    assert all(torch.equal(t, o) for t, o in zip(theirs.parameters(), ours.parameters()))


def test_the_adaptive_entropy_coefficient_follows_trls_over_several_steps():
    """Five optimiser steps, each one micro-batch with its own entropies around the target: TRL's
    coefficient after each step and the bonus it applies (seen in the entropies' gradient) are
    magrpo's EntropyControl's."""
    from magrpo.objective import EntropyControl

    options = {"entropy_coef": 0.05, "use_adaptive_entropy": True, "entropy_target": 2.0,
               "entropy_coef_delta": 0.02, "entropy_coef_min": 0.01, "entropy_coef_max": 0.08}  # fmt: skip
    config = trl_config(1, loss_type="dapo", **options)
    trainer = trl_trainer(config, accumulation=1)
    objective = Objective.from_config(MAGRPOConfig(max_new_tokens=T, loss_type="dapo", **options))
    control = EntropyControl(objective.entropy_coef)
    x = tensors(2)
    for step, scale in enumerate([1.5, 0.3, 0.3, 1.5, 0.3]):  # mean entropies 2.51 (above the target), 0.50
        entropies = (x.entropies * scale).requires_grad_()
        trainer._get_per_token_logps_and_entropies = lambda *a, _e=entropies, **k: (
            x.lp.clone().requires_grad_(),
            _e,
            None,
        )
        inputs = {"prompt_ids": torch.zeros(6, 0, dtype=torch.long), "prompt_mask": torch.zeros(6, 0, dtype=torch.long),
                  "completion_ids": torch.zeros(6, T, dtype=torch.long), "completion_mask": x.mask.long(),
                  "advantages": x.adv, "num_items_in_batch": torch.tensor(float(x.mask.sum()))}  # fmt: skip
        trainer._compute_loss(None, inputs).backward()
        ours = entropies.detach().clone().requires_grad_()
        bonus = EntropyBonus(control.applied(objective.adaptive_entropy), float(x.mask.sum()), ours)
        loss, figures = policy_loss(objective, x.lp.clone().requires_grad_(), x.mask, x.adv,
                                    normaliser=float(x.mask.sum()), entropy_bonus=bonus)  # fmt: skip
        loss.backward()
        our_grad = torch.zeros_like(ours) if ours.grad is None else ours.grad  # no bonus applied: no term
        assert torch.allclose(our_grad, entropies.grad, rtol=1e-12, atol=1e-15), step
        control.update(objective.adaptive_entropy, figures.figures()["entropy_exact"])
        assert control.coef == pytest.approx(trainer.entropy_coef, abs=1e-15), step
        assert control.last_entropy == pytest.approx(trainer._last_world_entropy, rel=1e-12), step
