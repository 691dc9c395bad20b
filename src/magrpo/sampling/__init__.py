"""Sampling: every agent samples G completions for each of its observations.

``rollout`` holds what a sampler returns (:class:`Rollout`) and the text <-> ids steps;
``sampler`` the protocol: a :class:`Sampler` samples one agent (``sample``) or the team
(``sample_team``) with one set of :class:`SamplingSettings`. ``fast`` (the default), ``plain``
(transformers' ``generate``) and ``vllm_engine`` (vLLM engines) implement it, the same policy done
three ways. :func:`make_sampler` is the one place a backend's name becomes a sampler.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from magrpo.choices import SAMPLERS, check_choice
from magrpo.sampling.rollout import Rollout
from magrpo.sampling.sampler import AgentSampling, Sampler, SamplingSettings, TokenFilter, agent_generators


def make_sampler(
    *,
    num_generations: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float = 1.0,
    backend: str = "fast",
    use_sampling_copy: bool = True,
    concurrent_agents: bool = False,
    stop: Sequence[str] = (),
    agents: Mapping[str, AgentSampling] | None = None,
) -> Sampler:
    """The ``backend``'s sampler ("fast", "plain" or "vllm") with these settings.

    ``use_sampling_copy=False`` samples with the training weights even where agents carry a
    reduced-precision sampling copy (evaluation measures the policy itself);
    ``concurrent_agents`` lets agents with models of their own sample at once where the backend
    can (the fast sampler); ``stop``: strings that end a completion; ``agents``: each named
    agent's own settings where they are not these (:class:`AgentSampling`)."""
    check_choice("rollout_backend", backend, SAMPLERS)  # for direct callers: a run's config is checked already
    settings = SamplingSettings(
        num_generations=num_generations,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        use_sampling_copy=use_sampling_copy,
        concurrent_agents=concurrent_agents,
        stop=tuple(stop),
        agents=tuple((agents or {}).items()),
    )
    if backend == "fast":
        from magrpo.sampling.fast import FastSampler as backend_class
    elif backend == "vllm":
        from magrpo.sampling.vllm_sampler import VLLMSampler as backend_class
    else:
        from magrpo.sampling.plain import PlainSampler as backend_class
    return backend_class(settings)


def greedy_sampler(max_new_tokens: int) -> Sampler:
    """One greedy answer per observation with the training weights, the agents at once (the fast
    sampler): how the prompt-only set-ups and the latency figures answer."""
    return make_sampler(
        num_generations=1,
        max_new_tokens=max_new_tokens,
        temperature=0.0,
        use_sampling_copy=False,
        concurrent_agents=True,
    )


def sampler_for(args: Any, *, training: bool, agent_names: Sequence[str]) -> Sampler:
    """A run's sampler (``args``: a :class:`~magrpo.config.MAGRPOConfig` whose backend is resolved).
    Training samples G completions at ``temperature`` (with the sampling copy, if any), the agents
    at once where ``concurrent_agents``; evaluation one answer at ``eval_temperature`` with the
    training weights. Either way agent i (``agent_names[i]``) samples with its own values of the
    fields given per agent (:func:`agent_sampling`)."""
    own = agent_sampling(args, agent_names, training=training)
    first = own[agent_names[0]]  # every agent is named: the team's values are only a fallback
    return make_sampler(
        num_generations=args.num_generations if training else 1,
        max_new_tokens=first.max_new_tokens,
        temperature=first.temperature,
        top_p=first.top_p,
        stop=first.stop,
        backend=args.rollout_backend,
        use_sampling_copy=training,
        concurrent_agents=args.concurrent_agents,
        agents=own,
    )


def agent_sampling(args: Any, agent_names: Sequence[str], *, training: bool) -> dict[str, AgentSampling]:
    """Each named agent's :class:`AgentSampling` from the config's values (one for the team, or
    one per agent): its budget, temperature (``eval_temperature`` where not ``training``), top_p,
    stop strings, top_k, min_p and repetition penalty."""
    temperatures = args.per_agent("temperature" if training else "eval_temperature")
    budgets, top_ps, stops = args.per_agent("max_new_tokens"), args.per_agent("top_p"), args.stop_per_agent()
    top_ks, min_ps, penalties = args.per_agent("top_k"), args.per_agent("min_p"), args.per_agent("repetition_penalty")
    return {
        name: AgentSampling(
            max_new_tokens=budgets[i],
            temperature=float(temperatures[i]),
            top_p=float(top_ps[i]),
            stop=stops[i],
            token_filter=TokenFilter(top_ks[i], min_ps[i], penalties[i]),
        )
        for i, name in enumerate(agent_names)
    }


__all__ = [
    "AgentSampling",
    "Rollout",
    "Sampler",
    "SamplingSettings",
    "TokenFilter",
    "agent_generators",
    "agent_sampling",
    "greedy_sampler",
    "make_sampler",
    "sampler_for",
]
