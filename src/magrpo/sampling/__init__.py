"""Sampling: every agent samples G completions for each of its observations.

``rollout`` holds what a sampler returns (:class:`Rollout`) and the text <-> ids steps; ``fast``
(the default), ``plain`` (transformers' ``generate``) and ``vllm_engine`` (vLLM engines) are the
samplers of one agent, the same policy done three ways; ``team`` runs every agent's sampler, one
after the other or at the same time. :func:`make_sampler` is the one place a run's sampling settings become a sampler.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from magrpo.choices import SAMPLERS, check_choice
from magrpo.models.agent import AgentPolicy
from magrpo.sampling.rollout import Rollout
from magrpo.sampling.team import SampleFn, sample_team
from magrpo.types import Observation


def make_sampler(
    *,
    num_generations: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float = 1.0,
    backend: str = "fast",
    use_sampling_copy: bool = True,
) -> SampleFn:
    """``sample(agent, observations, generator=None) -> Rollout`` with these settings.

    ``use_sampling_copy=False`` samples with the training weights even where agents carry a
    reduced-precision sampling copy (evaluation measures the policy itself)."""
    check_choice("rollout_backend", backend, SAMPLERS)
    if backend == "fast":
        from magrpo.sampling.fast import sample_fast as sampler
    elif backend == "vllm":
        from magrpo.sampling.vllm_engine import sample_vllm as sampler
        from magrpo.sampling.vllm_engine import sample_vllm_agents
    else:
        from magrpo.sampling.plain import sample_plain as sampler

    def sample(
        agent: AgentPolicy, observations: Sequence[Observation], generator: torch.Generator | None = None
    ) -> Rollout:
        return sampler(
            agent,
            observations,
            num_generations=num_generations,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            use_sampling_copy=use_sampling_copy,
            generator=generator,
        )

    if backend == "vllm":  # the team's agents that share an engine decode in one batch

        def sample_agents(
            agents: Sequence[AgentPolicy],
            observations: Sequence[Sequence[Observation]],
            generators: Sequence[torch.Generator | Sequence[torch.Generator] | None],
        ) -> list[Rollout]:
            return sample_vllm_agents(
                agents,
                observations,
                generators=generators,
                num_generations=num_generations,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
            )

        sample.sample_agents = sample_agents  # type: ignore[attr-defined]
    return sample


def sampler_for(args: Any, *, training: bool) -> SampleFn:
    """A run's sampler (``args``: a :class:`~magrpo.config.MAGRPOConfig`). Training samples G
    completions at ``temperature`` (with the sampling copy, if any); evaluation one answer at
    ``eval_temperature`` with the training weights."""
    return make_sampler(
        num_generations=args.num_generations if training else 1,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature if training else args.eval_temperature,
        top_p=args.top_p,
        backend=args.rollout_backend,
        use_sampling_copy=training,
    )


def concurrent_agents(args: Any) -> bool:
    """Whether a run's agents sample at the same time: generate() draws from the one global RNG,
    so only the fast sampler may run in threads."""
    return args.concurrent_agents and args.rollout_backend == "fast"


__all__ = ["Rollout", "SampleFn", "concurrent_agents", "make_sampler", "sample_team", "sampler_for"]
