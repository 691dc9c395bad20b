"""The sampler of ``rollout_backend="vllm"``: every agent's prompts go to its engine as token ids
with one sampling request per prompt, whatever the engine is (:class:`Engine`): one in the
training process or in a process of its own (:mod:`magrpo.sampling.vllm_engine`), or a rollout
server's (:mod:`magrpo.sampling.vllm_client`). The requests and the completions are plain data
(:class:`SamplingRequest`, :data:`Completion`), so the same sampler drives all three.

The same policy as the other samplers: the agent's own tokenizer renders and tokenises the prompt;
the engine stops at exactly the agent's EOS ids and samples softmax(logits / temperature) with
optional top-p and the agent's own top-k, min-p and repetition penalty (vLLM's SamplingParams
has all three); temperature 0 is greedy. Sampled-token log-probabilities come back
for the truncated importance-sampling correction the update applies. Every prompt's request
carries a seed drawn from that prompt's random stream, so the draws do not depend on the batch.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Protocol, Sequence

import torch

from magrpo.errors import ConfigError
from magrpo.grouping import group_by_identity
from magrpo.models.agent import AgentPolicy
from magrpo.sampling.rollout import Rollout, rollout_of, tokenize_prompts
from magrpo.sampling.sampler import Generators, Sampler, SamplingSettings
from magrpo.types import Observation

#: one completion: its token ids and each sampled token's log-probability (empty when greedy)
Completion = tuple[list[int], list[float]]


@dataclass(frozen=True)
class SamplingRequest:
    """How one prompt is sampled: n completions of at most ``max_tokens``, from its own seed."""

    n: int
    temperature: float
    top_p: float
    max_tokens: int
    stop_token_ids: tuple[int, ...]
    seed: int
    logprobs: bool
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["stop_token_ids"] = list(self.stop_token_ids)
        return values

    def to_vllm(self) -> Any:
        """vLLM's SamplingParams for this request: no special-token skipping, ids only."""
        from vllm import SamplingParams

        return SamplingParams(
            n=self.n,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            min_p=self.min_p,
            repetition_penalty=self.repetition_penalty,
            max_tokens=self.max_tokens,
            stop_token_ids=list(self.stop_token_ids),
            ignore_eos=False,
            logprobs=0 if self.logprobs else None,
            seed=self.seed,
            detokenize=False,
            skip_special_tokens=False,
        )


#: one agent's share of a batch: the agent, its prompts' token ids, one request per prompt
AgentRequests = tuple[AgentPolicy, Sequence[list[int]], Sequence[SamplingRequest]]


class Engine(Protocol):
    """What serves an agent's samples: an engine here or elsewhere."""

    #: whether it decodes in a process of its own (then several engines decode at once)
    own_process: bool

    def generate(self, requests: Sequence[AgentRequests]) -> list[list[list[Completion]]]:
        """Every request in ONE batch, each agent on its current policy; per request, per prompt,
        its completions."""
        ...

    def mark_stale(self, agent: AgentPolicy) -> None: ...

    def sleep(self) -> None: ...


class VLLMSampler(Sampler):
    """``rollout_backend="vllm"``: the agents' engines; the agents that share an engine decode in
    one batch. The engine samples the current policy for training and evaluation alike
    (``use_sampling_copy`` has nothing to choose here)."""

    def models_to_gather(self, agents: Sequence[AgentPolicy]) -> list[torch.nn.Module]:
        return []  # the engines hold their own weights: a sharded agent's reach them one tensor at a time

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
        adapter. Engines in processes of their own decode at the same time."""
        for agent in agents:
            if getattr(agent, "rollout_engine", None) is None:
                raise ConfigError(
                    f"agent {agent.name!r} has no vLLM engine; the trainer builds them for rollout_backend='vllm'"
                )
        settings = self.settings
        tokenized = [tokenize_prompts(agent, obs) for agent, obs in zip(agents, observations)]
        requests = [
            (
                agent,
                [ids[mask.bool()].tolist() for ids, mask in zip(prompt_ids, prompt_mask)],
                sampling_requests(agent, generator, len(prompt_ids), settings),
            )
            for agent, generator, (_, prompt_ids, prompt_mask) in zip(agents, generators, tokenized)
        ]
        outputs: list[list[list[Completion]]] = [[] for _ in agents]
        groups = group_by_identity(agents, key=lambda agent: agent.rollout_engine)

        def generate(group: list[int]) -> None:
            for i, out in zip(group, agents[group[0]].rollout_engine.generate([requests[i] for i in group])):
                outputs[i] = out

        if len(groups) > 1 and all(agents[g[0]].rollout_engine.own_process for g in groups):
            # each request has its own seed, so the samples are those of one engine after the other
            with ThreadPoolExecutor(max_workers=len(groups)) as pool:
                list(pool.map(generate, groups))
        else:
            for group in groups:
                generate(group)
        return [
            completions_rollout(agent, out, prompts, prompt_ids, prompt_mask, settings)
            for agent, out, (prompts, prompt_ids, prompt_mask) in zip(agents, outputs, tokenized)
        ]


def sampling_requests(
    agent: AgentPolicy, generator: Generators, count: int, settings: SamplingSettings
) -> list[SamplingRequest]:
    """One request per prompt; greedy decoding samples one answer, the same for every generation."""
    settings = settings.for_agent(agent)
    greedy = settings.temperature == 0.0
    token_filter = settings.token_filter
    return [
        SamplingRequest(
            n=1 if greedy else settings.num_generations,
            temperature=0.0 if greedy else settings.temperature,
            top_p=1.0 if greedy else settings.top_p,
            max_tokens=settings.max_new_tokens,
            stop_token_ids=tuple(agent.eos_token_ids),
            seed=seed,
            logprobs=not greedy,
            top_k=0 if greedy else token_filter.top_k,
            min_p=0.0 if greedy or token_filter.min_p is None else token_filter.min_p,
            repetition_penalty=token_filter.repetition_penalty,
        )
        for seed in request_seeds(generator, count)
    ]


def request_seeds(generator: Generators, count: int) -> list[int]:
    """One seed per prompt: from that prompt's own generator, else drawn in order from one."""
    if generator is None or isinstance(generator, torch.Generator):
        source = [generator] * count
    else:
        source = list(generator)
    return [
        int(torch.randint(0, 2**62, (1,), generator=g, device=g.device if g is not None else "cpu")) for g in source
    ]


def vllm_completions(outputs: Sequence[Any]) -> list[list[Completion]]:
    """vLLM's request outputs as plain completions: per prompt, each completion's token ids and
    its sampled tokens' log-probabilities (``processed_logprobs``: of the distribution that sampled)."""
    return [
        [
            (
                list(c.token_ids),
                [step[token].logprob for step, token in zip(c.logprobs, c.token_ids)] if c.logprobs else [],
            )
            for c in output.outputs
        ]
        for output in outputs
    ]


def completions_rollout(
    agent: AgentPolicy,
    outputs: Sequence[Sequence[Completion]],
    prompts: list[str],
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    settings: SamplingSettings,
) -> Rollout:
    """One agent's completions as its :class:`Rollout` (ids padded, sampled-token log-probs)."""
    settings = settings.for_agent(agent)
    greedy = settings.temperature == 0.0
    copies = settings.num_generations if greedy else 1
    rows = [completion for output in outputs for completion in output for _ in range(copies)]
    length = max(1, max(len(ids) for ids, _ in rows))
    completion_ids = torch.full((len(rows), length), agent.pad_token_id, dtype=torch.long)
    logprobs = torch.zeros((len(rows), length), dtype=torch.float32)
    for r, (ids, sampled) in enumerate(rows):
        completion_ids[r, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        if sampled:
            logprobs[r, : len(ids)] = torch.tensor(sampled, dtype=torch.float32)
    completion_ids, logprobs = completion_ids.to(agent.device), logprobs.to(agent.device)
    rollout = rollout_of(
        agent, prompts, prompt_ids, prompt_mask, completion_ids, settings.num_generations, stop=settings.stop
    )
    if not greedy:  # the sampled tokens' log-probs, 0.0 past each completion's end
        rollout.token_logprobs = torch.where(rollout.completion_mask, logprobs, torch.zeros_like(logprobs))
    return rollout


__all__ = [
    "AgentRequests",
    "Completion",
    "Engine",
    "SamplingRequest",
    "VLLMSampler",
    "completions_rollout",
    "request_seeds",
    "sampling_requests",
    "vllm_completions",
]
