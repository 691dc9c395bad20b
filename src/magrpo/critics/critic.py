"""The critics of a team (IAC, MAAC) and what they do in a step: value the nodes of the rollout
tree, turn the tree's returns into the actors' advantages A = R - V, and hand each critic the
observations and targets its value loss trains on.

    IAC   one critic per agent, reading that agent's own observation (its prompt at the turn:
          task, history and feedback)
    MAAC  one centralised critic, reading the joint observation (every agent's prompt at the turn)

A V critic (``critic_type="v"``) values the observation, one value per node; a Q critic
(``critic_type="q"``) the observation and the action taken (IAC: the agent's own completion;
MAAC: every agent's), one value per joint action of a node.

A critic is a value head on a language model's last hidden state, either

- on an agent's own model (the default; MAAC's on the first agent's): trained with that agent's
  update (one loss, one backward pass, one optimiser in which the head is a parameter group at
  ``critic_learning_rate``), so the value loss reaches the shared body too (with LoRA, the
  adapter), as in PPO with a shared trunk; or
- on a critic model of its own (``critic_model``: any causal LM; with ``critic_use_lora`` an
  adapter on it), with its own AdamW at ``critic_learning_rate``, updated after the agents; it
  reads the observations' text through its own tokenizer, and the agents' weights never see the
  value loss.

Either way the actor's loss never reaches a critic: the advantages take the values as constants.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from magrpo.choices import CRITIC_ALGORITHMS
from magrpo.critics.targets import critic_advantages, explained_variance, normalise_advantages, q_advantages
from magrpo.critics.value_head import ValueHead, observation_values
from magrpo.errors import CheckpointError
from magrpo.logprobs import scoring_mode, trim_left
from magrpo.models import AgentPolicy
from magrpo.ranks import OneProcess
from magrpo.tree import Turn, turn_returns

#: the value-head weights' file in a checkpoint's (and the final weights') critic folder
VALUE_HEAD_FILE = "value_head.safetensors"


@dataclass
class Critic:
    """One critic: a value head reading the observations of agent ``host`` (``joint=False``,
    IAC) or the team's joint observation (``joint=True``, MAAC), with the action taken where
    ``action`` (a Q critic), on the host's model, or on a ``model`` of its own trained by its own
    ``optimizer``."""

    name: str
    head: ValueHead
    host: int
    joint: bool
    model: AgentPolicy | None = None
    optimizer: torch.optim.Optimizer | None = None
    action: bool = False

    def body(self, agents: Sequence[AgentPolicy]) -> AgentPolicy:
        """The model the head reads: the critic's own, or its host agent's."""
        return self.model if self.model is not None else agents[self.host]

    def parameters(self) -> list[torch.nn.Parameter]:
        """What the critic's own optimiser trains: its model's trainable weights and its head
        (a head on an agent's model: the head only, the body is the agent's)."""
        return (self.model.trainable_parameters() if self.model is not None else []) + list(self.head.parameters())


@dataclass
class CriticBatch:
    """What one critic trains on in a step, per turn: the observations it valued (left-padded ids
    ``[P_t, L]``), their values when the advantages were made (``[P_t]``, float32 on the CPU,
    beside the rewards) and the returns of each node's joint actions, the targets (``[P_t, J]``).
    A Q critic's observations are the node's joint actions (``[P_t * J, L]``, row p * J + j), each
    with its own return (``[P_t * J, 1]``)."""

    critic: Critic
    prompt_ids: list[torch.Tensor]
    prompt_mask: list[torch.Tensor]
    old_values: list[torch.Tensor]
    targets: list[torch.Tensor]

    @property
    def num_targets(self) -> int:
        return sum(t.numel() for t in self.targets)

    def figures(self, ranks: OneProcess) -> dict[str, float]:
        """The critic's figures before its update, over every rank's nodes (collective): the
        mean value, and how much of the returns' variance the values explain (1: all, 0: no
        better than their mean)."""
        mine = (
            torch.cat([v.cpu().repeat_interleave(t.shape[1]) for v, t in zip(self.old_values, self.targets)]),
            torch.cat([t.cpu().reshape(-1) for t in self.targets]),
            torch.cat([v.cpu() for v in self.old_values]),
        )
        values, targets, nodes = (torch.cat(parts) for parts in zip(*ranks.gather(mine)))
        return {
            "value_mean": float(nodes.double().mean()),
            "explained_variance": explained_variance(values, targets),
        }


def make_critics(
    agents: Sequence[AgentPolicy],
    algorithm: str,
    models: Sequence[AgentPolicy] | None = None,
    critic_type: str = "v",
) -> list[Critic]:
    """The critics ``algorithm`` trains: none for MAGRPO, one per agent for IAC, one for the team
    for MAAC; on the agents' models (MAAC: the first agent's) or on ``models`` (one per critic);
    V(s) or, with ``critic_type="q"``, Q(s, a) critics. Zero-initialised heads: V = 0 at the start."""
    if algorithm not in CRITIC_ALGORITHMS:
        return []
    hosts = range(len(agents)) if algorithm == "iac" else [0]
    if models is not None and len(models) != len(hosts):
        raise ValueError(f"{len(models)} critic models for {len(hosts)} critics of algorithm={algorithm!r}")
    critics = []
    for k, host in enumerate(hosts):
        model = models[k] if models is not None else None
        body = model if model is not None else agents[host]
        head = ValueHead(body.model.config.hidden_size).to(body.device)
        name = f"{agents[host].name}_critic" if algorithm == "iac" else "team_critic"
        critics.append(Critic(name, head, host=host, joint=algorithm == "maac", model=model, action=critic_type == "q"))
    return critics


def critic_of(critics: Sequence[Critic], agent: int) -> Critic:
    """The critic whose values are agent ``agent``'s baseline: its own (IAC) or the team's (MAAC)."""
    return critics[0] if critics[0].joint else critics[agent]


def joint_observation(names: Sequence[str], prompts: Sequence[str], actions: Sequence[str] | None = None) -> str:
    """Every agent's observation at one node, as one text for a centralised critic; with
    ``actions`` (a Q critic), the joint action after them, each agent's completion in a block of
    its own (a completion never runs into the text before it)."""
    text = "\n\n".join(f"[{name}]\n{prompt}" for name, prompt in zip(names, prompts))
    if actions is None:
        return text
    return text + "".join(f"\n\n[{name} action]\n{action}" for name, action in zip(names, actions))


def critic_observations(critic: Critic, agents: Sequence[AgentPolicy], turn: Turn) -> tuple[torch.Tensor, torch.Tensor]:
    """The observations ``critic`` values at ``turn``, left-padded: one per node ``[P, L]``, or one
    per joint action ``[P * J, L]`` (row p * J + j) where :func:`values_joint_actions`. A head on
    its host's model reads the host's own ids as it sampled them (its prompt; a Q critic's, the
    prompt then the completion); a joint observation, or a critic model of its own, the text
    through its own tokenizer (a Q critic of its own: the prompt's tokens, then the completion's).
    A joint observation is every agent's observation at the node, before any of them answered."""
    per_joint = values_joint_actions(critic, turn)
    if not critic.joint:
        rollout = turn.rollouts[critic.host]
        prompt_rows, completion_rows = _joint_action_rows(turn, critic.host)
        if critic.model is None:
            if not per_joint:
                return rollout.prompt_ids, rollout.prompt_mask
            ids, mask = rollout.prompt_ids[prompt_rows], rollout.prompt_mask[prompt_rows]
            if not critic.action:
                return ids, mask
            return packed_left(
                ids, mask, rollout.completion_ids[completion_rows], rollout.completion_mask[completion_rows]
            )
        if critic.action:
            pieces = [
                [rollout.prompts[p], rollout.texts[c]] for p, c in zip(prompt_rows.tolist(), completion_rows.tolist())
            ]
        else:
            pieces = [[rollout.prompts[p]] for p in (prompt_rows.tolist() if per_joint else range(turn.num_nodes))]
    else:
        names = [a.name for a in agents]
        nodes = range(turn.num_nodes)
        prompts = [node_prompts(turn, agents, p) for p in nodes]
        if critic.action:  # one observation per joint action
            pieces = [
                [joint_observation(names, prompts[p], turn.joint_completions(p, j))]
                for p in nodes
                for j in range(turn.num_joint)
            ]
        else:
            pieces = [[joint_observation(names, prompts[p])] for p in nodes]
    body = critic.body(agents)
    return tokenized_left(body.tokenizer, pieces, body.device)


def values_joint_actions(critic: Critic, turn: Turn) -> bool:
    """Whether ``critic`` values each joint action of ``turn`` rather than each node: a Q critic,
    or an agent's own V critic where the agent answered after others (protocol="sequential"): its
    observation holds their answers, one observation per joint action of an aligned chain."""
    return critic.action or (not critic.joint and turn.rollouts[critic.host].num_prompts != turn.num_nodes)


def node_prompts(turn: Turn, agents: Sequence[AgentPolicy], node: int) -> list[str]:
    """Every agent's rendered observation at ``node`` before any agent of the turn answered (an
    agent that answered after others is given its observation without their answers)."""
    prompts = []
    for i, (agent, rollout) in enumerate(zip(agents, turn.rollouts)):
        own_per_node = rollout.num_prompts == turn.num_nodes
        prompts.append(rollout.prompts[node] if own_per_node else agent.render(turn.observations[i][node])[0])
    return prompts


def tokenized_left(tokenizer, rows: Sequence[Sequence[str]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's texts tokenized one by one and joined (a prompt's tokens, then a completion's, as
    a model reads and writes them), left-padded ``[B, L]`` ids and mask. The rendered prompts carry
    their chat templates' special tokens already."""
    pieces = [piece for row in rows for piece in row]
    ids = iter(tokenizer(pieces, add_special_tokens=False)["input_ids"])
    joined = [[token for _ in row for token in next(ids)] for row in rows]
    width = max(len(row) for row in joined)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids_out = torch.tensor([[pad] * (width - len(row)) + row for row in joined], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in joined], dtype=torch.long)
    return ids_out.to(device), mask.to(device)


def _joint_action_rows(turn: Turn, agent: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For every joint action of ``turn`` (row p * J + j): the row of ``agent``'s prompt (its node
    p; after other agents, the prompt holding their answers) and of its completion in it."""
    rows = [turn.joint_rows(p, j)[agent] for p in range(turn.num_nodes) for j in range(turn.num_joint)]
    completions = torch.tensor(rows, dtype=torch.long)
    return completions // turn.rollouts[agent].num_generations, completions


def packed_left(
    prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: torch.Tensor, completion_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompts ``[B, Lp]`` and right-padded completions ``[B, Lc]`` as one left-padded
    sequence each ``[B, Lp + Lc]`` (the padding between them moved to the left, the tokens in
    order), so that a sequence's last position is its last token."""
    ids = torch.cat([prompt_ids, completion_ids.to(prompt_ids.device)], dim=1)
    mask = torch.cat([prompt_mask.bool(), completion_mask.to(prompt_mask.device).bool()], dim=1)
    order = torch.argsort(mask.to(torch.int8), dim=1, stable=True)  # padding first, tokens in order
    return ids.gather(1, order), mask.gather(1, order).to(prompt_mask.dtype)


def chunked_values(
    model: torch.nn.Module, head: ValueHead, ids: torch.Tensor, mask: torch.Tensor, chunk: int
) -> torch.Tensor:
    """V of every observation ``[B]``, ``chunk`` observations per forward pass (each trimmed of
    the padding it does not need), with whatever gradient mode the caller set."""
    values = []
    for rows in torch.arange(ids.shape[0], device=ids.device).split(chunk):
        part_ids, part_mask = trim_left(ids[rows], mask[rows])
        values.append(observation_values(model, head, part_ids, part_mask))
    return torch.cat(values)


def value_the_tree(
    critic: Critic,
    agents: Sequence[AgentPolicy],
    turns: Sequence[Turn],
    chunk: int,
    autocast: Callable[[torch.device], contextlib.AbstractContextManager],
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """The critic's observations and values (float32, no gradient) of every node of every turn."""
    body = critic.body(agents)
    observed = [critic_observations(critic, agents, turn) for turn in turns]
    values = []
    with torch.no_grad(), body.with_own_adapter() as on, scoring_mode(on) as model, autocast(body.device):
        for ids, mask in observed:
            values.append(chunked_values(model, critic.head, ids, mask, chunk).float().cpu())
    return [ids for ids, _ in observed], [mask for _, mask in observed], values


def critic_step(
    critics: Sequence[Critic],
    agents: Sequence[AgentPolicy],
    turns: Sequence[Turn],
    returns: Sequence[torch.Tensor],
    *,
    gamma: float,
    num_turns: int,
    lam: float,
    normalise: bool,
    chunk: int,
    autocast: Callable[[torch.device], contextlib.AbstractContextManager],
    ranks: OneProcess,
) -> tuple[list[list[torch.Tensor]], list[CriticBatch]]:
    """Every agent's advantages at every turn (``[P_t * J]``, row p * J + j) from its critic's
    values (R - V(s); a Q critic's Q(s, a_j) - mean_j' Q(s, a_j')), and each critic's
    :class:`CriticBatch` (in the order of ``critics``). Each critic's targets are the tree's
    Monte-Carlo ``returns`` (``lam`` = 1), or its TD(lambda) returns with its own values."""
    batches = []
    for critic in critics:
        ids, mask, values = value_the_tree(critic, agents, turns, chunk, autocast)
        per_joint = [values_joint_actions(critic, t) for t in turns]
        # V(node), where TD(lambda) bootstraps from one: for values per joint action, their node's mean
        nodes = [v.view(t.num_nodes, t.num_joint).mean(1) if pj else v for v, t, pj in zip(values, turns, per_joint)]
        targets = list(returns) if lam == 1.0 else turn_returns(turns, gamma, num_turns, values=nodes, lam=lam)
        # a joint action valued on its own is an observation of its own, with its own return
        targets = [t.reshape(-1, 1) if pj else t for t, pj in zip(targets, per_joint)]
        batches.append(CriticBatch(critic, ids, mask, values, targets))
    advantages = []
    by_critic = {id(batch.critic): batch for batch in batches}
    for i in range(len(agents)):
        batch = by_critic[id(critic_of(critics, i))]
        if batch.critic.action:
            mine = [q_advantages(q.view(t.num_nodes, t.num_joint)) for q, t in zip(batch.old_values, turns)]
        else:  # R - V, where V is the node's or (an agent after others) the joint action's context's
            mine = [
                critic_advantages(ret.view(t.num_nodes, t.num_joint), v.view(t.num_nodes, -1))
                for ret, v, t in zip(batch.targets, batch.old_values, turns)
            ]
        if normalise:  # by the mean and std of this agent's whole step (every rank's), then back into turns
            flat = torch.cat(mine)
            flat = normalise_advantages(flat, reference=torch.cat(ranks.gather(flat.cpu())).to(flat.device))
            mine = list(flat.split([m.numel() for m in mine]))
        advantages.append(mine)
    return advantages, batches


def save_critics(critics: Sequence[Critic], directory: Path) -> None:
    """Each critic to ``directory/<critic name>/``: its head as ``value_head.safetensors``, beside
    its own model's weights (or adapter), where it has one."""
    from safetensors.torch import save_file

    from magrpo.models.loading import save_agent

    for critic in critics:
        if critic.model is not None:
            save_agent(critic.model, directory / critic.name)
        (directory / critic.name).mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in critic.head.state_dict().items()}
        save_file(state, directory / critic.name / VALUE_HEAD_FILE)


def load_heads(critics: Sequence[Critic], directory: Path) -> None:
    """Put each critic's head back from :func:`save_critics`' files, naming what is missing."""
    from safetensors.torch import load_file

    for critic in critics:
        path = directory / critic.name / VALUE_HEAD_FILE
        if not path.is_file():
            raise CheckpointError(f"checkpoint {str(directory)!r} has no value head for {critic.name!r} ({path.name})")
        critic.head.load_state_dict(load_file(path, device=str(next(critic.head.parameters()).device)))


__all__ = [
    "VALUE_HEAD_FILE",
    "Critic",
    "CriticBatch",
    "chunked_values",
    "critic_observations",
    "critic_of",
    "critic_step",
    "joint_observation",
    "load_heads",
    "make_critics",
    "node_prompts",
    "packed_left",
    "tokenized_left",
    "save_critics",
    "value_the_tree",
    "values_joint_actions",
]
