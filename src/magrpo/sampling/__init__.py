"""Sampling: every agent samples G completions for each of its observations.

``rollout`` holds what a sampler returns (:class:`Rollout`) and the text <-> ids steps;
``sampler`` the protocol: a :class:`Sampler` samples one agent (``sample``) or the team
(``sample_team``) with one set of :class:`SamplingSettings`. ``fast`` (the default), ``plain``
(transformers' ``generate``) and ``vllm_engine`` (vLLM engines) implement it, the same policy done
three ways. :func:`make_sampler` is the one place a backend's name becomes a sampler.
"""

from __future__ import annotations

from typing import Any, Sequence

from magrpo.choices import SAMPLERS, check_choice
from magrpo.sampling.rollout import Rollout
from magrpo.sampling.sampler import Sampler, SamplingSettings, TokenFilter, agent_generators


def make_sampler(
    *,
    num_generations: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float = 1.0,
    backend: str = "fast",
    use_sampling_copy: bool = True,
    concurrent_agents: bool = False,
    token_filters: dict[str, TokenFilter] | None = None,
) -> Sampler:
    """The ``backend``'s sampler ("fast", "plain" or "vllm") with these settings.

    ``use_sampling_copy=False`` samples with the training weights even where agents carry a
    reduced-precision sampling copy (evaluation measures the policy itself);
    ``concurrent_agents`` lets agents with models of their own sample at once where the backend
    can (the fast sampler); ``token_filters``: each agent's top-k, min-p and repetition penalty,
    by its name."""
    check_choice("rollout_backend", backend, SAMPLERS)  # for direct callers: a run's config is checked already
    settings = SamplingSettings(
        num_generations=num_generations,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        use_sampling_copy=use_sampling_copy,
        concurrent_agents=concurrent_agents,
        token_filters=tuple((token_filters or {}).items()),
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


def sampler_for(args: Any, *, training: bool, agent_names: Sequence[str] = ()) -> Sampler:
    """A run's sampler (``args``: a :class:`~magrpo.config.MAGRPOConfig` whose backend is resolved).
    Training samples G completions at ``temperature`` (with the sampling copy, if any), the agents
    at once where ``concurrent_agents``; evaluation one answer at ``eval_temperature`` with the
    training weights. Either way agent i (``agent_names[i]``) samples with its own top_k, min_p
    and repetition_penalty."""
    return make_sampler(
        num_generations=args.num_generations if training else 1,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature if training else args.eval_temperature,
        top_p=args.top_p,
        backend=args.rollout_backend,
        use_sampling_copy=training,
        concurrent_agents=args.concurrent_agents,
        token_filters=token_filters(args, agent_names),
    )


def token_filters(args: Any, agent_names: Sequence[str]) -> dict[str, TokenFilter]:
    """Each named agent's :class:`TokenFilter` from the config's values (one, or one per agent)."""

    def of(value: Any, i: int) -> Any:
        return value[i] if isinstance(value, list) else value

    return {
        name: TokenFilter(of(args.top_k, i), of(args.min_p, i), of(args.repetition_penalty, i))
        for i, name in enumerate(agent_names)
    }


__all__ = [
    "Rollout",
    "Sampler",
    "SamplingSettings",
    "TokenFilter",
    "agent_generators",
    "greedy_sampler",
    "make_sampler",
    "sampler_for",
    "token_filters",
]
