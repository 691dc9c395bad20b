"""The reward-function sugar: an environment around formatters, a scorer and (for several
turns) a feedback source.

``reset`` shows each agent ``formatters[i](item)``. Without feedback, ``step`` ends the episode
with the joint reward. With feedback, each agent's next observation is its history: its previous
observation, its own answer, then its feedback and a request to revise; the episode ends when
``is_solved(score_row)`` says so (the trainer's ``num_turns`` caps it). ``step_many`` scores a
whole batch of joint actions in ONE call of the scorer, which is what reward functions (and the
sandbox pool behind the coding reward) are built for; ``observe_many`` asks the feedback source
once for the branches that continue, and only for them (``step`` does both, for one env).
Taking turns (``sequential``), an agent is shown the earlier agents' answers of its joint action
as ``show_earlier_answers`` words them, and its history and the scorer's prompts hold what it saw.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Iterator, Mapping, Sequence

from magrpo.data import columns_of
from magrpo.envs.base import MultiAgentEnv, StepResult, with_text_added
from magrpo.errors import RewardError
from magrpo.feedback.base import Feedback, FeedbackRequest
from magrpo.grouping import group_by_identity, run_per_group
from magrpo.rewards.validation import validate_rewards
from magrpo.types import Formatter, JointAction, Observation, Scorer


def reward_func_name(func: Callable[..., Any]) -> str:
    """How a reward function's value is named in a score row (``reward/NAME``)."""
    return getattr(func, "__name__", type(func).__name__)


def scorer_from_reward_funcs(
    reward_funcs: Sequence[Callable[..., Any]], weights: Sequence[float] | None = None, keep_parts: bool = False
) -> Scorer:
    """Reward functions -> one scorer: the weighted sum, each function's value kept as a figure
    (``reward/NAME``: with several functions, or ``keep_parts``). The scorer's ``reward_parts``
    are the (name, weight) pairs."""
    funcs = list(reward_funcs)
    weights = list(weights) if weights is not None else [1.0] * len(funcs)
    if len(weights) != len(funcs):
        raise ValueError(f"{len(weights)} reward weights for {len(funcs)} reward functions")

    def scorer(*, completions, prompts, **columns) -> list[dict[str, float]]:
        rows = [{"reward": 0.0} for _ in completions]
        for func, weight in zip(funcs, weights):
            name = reward_func_name(func)
            with naming_failures("reward function", name, columns):
                returned = func(completions=completions, prompts=prompts, **columns)
            values = validate_rewards(func, returned, len(completions))
            for row, value in zip(rows, values):
                row["reward"] += weight * value
                if len(funcs) > 1 or keep_parts:
                    row[f"reward/{name}"] = value
        return rows

    scorer.reward_parts = [(reward_func_name(f), float(w)) for f, w in zip(funcs, weights)]  # type: ignore[attr-defined]
    return scorer


@contextlib.contextmanager
def naming_failures(kind: str, name: str, columns: Mapping[str, Sequence[Any]]) -> Iterator[None]:
    """A user's function that raises, re-raised as a :class:`RewardError` naming it and the items
    it was scoring (a RewardError of an inner function passes as it is)."""
    try:
        yield
    except RewardError:
        raise
    except Exception as exc:
        raise RewardError(
            f"{kind} {name!r} raised {type(exc).__name__}: {exc} (scoring items {describe_items(columns)})"
        ) from exc


def describe_items(columns: Mapping[str, Sequence[Any]], width: int = 60) -> str:
    """The distinct items of a scoring call, each by its first field, shortened to ``width``."""
    if not columns:
        return "(no columns)"
    key, values = next(iter(columns.items()))
    distinct = list(dict.fromkeys(repr(v)[:width] for v in values))
    return ", ".join(f"{key}={v}" for v in distinct[:4]) + (
        f" and {len(distinct) - 4} more" if len(distinct) > 4 else ""
    )


def validate_scores(scorer: Scorer, rows: Any, expected: int) -> list[dict[str, float]]:
    if not isinstance(rows, list) or len(rows) != expected:
        count = len(rows) if hasattr(rows, "__len__") else type(rows).__name__
        raise RewardError(
            f"scorer {getattr(scorer, '__name__', scorer)!r} returned {count} rows for {expected} joint actions"
        )
    validate_rewards(scorer, [row.get("reward") if isinstance(row, dict) else row for row in rows], expected)
    return rows


REVISE_INSTRUCTION = "Feedback on your last answer:\n{feedback}\n\nWrite your improved answer."


def as_messages(observation: Observation) -> list[dict[str, str]]:
    return [{"role": "user", "content": observation}] if isinstance(observation, str) else list(observation)


class RewardFunctionEnv(MultiAgentEnv):
    def __init__(
        self,
        item: Mapping[str, Any],
        formatters: Sequence[Formatter],
        scorer: Scorer,
        agent_names: Sequence[str],
        *,
        feedback: Feedback | None = None,
        is_solved: Callable[[Mapping[str, Any]], bool] | None = None,
        agent_roles: Sequence[str] | None = None,
        num_turns: int | None = None,
        sequential: bool = False,
        show_earlier_answers: Callable[[Sequence[str], Mapping[str, Any]], str] | None = None,
    ):
        if len(formatters) != len(agent_names):
            raise ValueError(
                f"{len(formatters)} formatters for {len(agent_names)} agents: give one formatter per agent"
            )
        self.item = item
        self.formatters = list(formatters)
        self.scorer = scorer
        self.possible_agents = list(agent_names)
        self.feedback = feedback
        self.is_solved = is_solved
        self.agent_roles = tuple(agent_roles or agent_names)
        self.num_turns = num_turns  # no feedback is asked for after the last turn
        #: the agents answer one after the other, each shown the earlier ones' answers of the turn
        self.sequential = sequential
        #: how an agent is shown them: (their answers in order, the item) -> text added to its prompt
        self.show_earlier_answers = show_earlier_answers
        self.observations: dict[str, Observation] = {}
        self.turn = 0
        #: what the feedback source would be asked about the last joint action (None: nothing)
        self.pending: tuple[FeedbackRequest, dict[str, str]] | None = None

    def reset(self, seed=None, options=None):
        self.turn = 0
        self.pending = None
        self.observations = {name: fmt(self.item) for name, fmt in zip(self.possible_agents, self.formatters)}
        return dict(self.observations), {name: {} for name in self.possible_agents}

    def branch(self) -> "RewardFunctionEnv":
        # the item is read-only: share it instead of deep-copying a long text per joint action
        twin = RewardFunctionEnv(
            self.item,
            self.formatters,
            self.scorer,
            self.possible_agents,
            feedback=self.feedback,
            is_solved=self.is_solved,
            agent_roles=self.agent_roles,
            num_turns=self.num_turns,
            sequential=self.sequential,
            show_earlier_answers=self.show_earlier_answers,
        )
        twin.observations = dict(self.observations)
        twin.turn = self.turn
        twin.pending = self.pending
        return twin

    def observe_after(self, name: str, observation: Observation, earlier: Mapping[str, str]) -> Observation:
        if self.show_earlier_answers is None:
            return super().observe_after(name, observation, earlier)
        return with_text_added(observation, self.show_earlier_answers(list(earlier.values()), self.item))

    def seen(self, name: str, actions: Mapping[str, str]) -> Observation:
        """What agent ``name`` saw when it answered ``actions``' part of it: its observation, with
        the earlier agents' answers where the team answers one after the other."""
        earlier = self.possible_agents[: self.possible_agents.index(name)]
        if not self.sequential or not earlier:
            return self.observations[name]
        return self.observe_after(name, self.observations[name], {n: actions[n] for n in earlier})

    def _next_observation(self, name: str, answer: str, feedback: str, answers: Mapping[str, str]) -> Observation:
        return as_messages(self.seen(name, answers)) + [
            {"role": "assistant", "content": answer},
            {"role": "user", "content": REVISE_INSTRUCTION.format(feedback=feedback)},
        ]

    def step(self, actions: dict[str, str]) -> StepResult:
        result = self.step_many([self], [actions])[0]
        if result.done:
            return result
        return result._replace(observations=self.observe_many([self], [result])[0])

    @classmethod
    def step_many(cls, envs: Sequence["RewardFunctionEnv"], actions: Sequence[dict[str, str]]) -> list[StepResult]:
        """Score every joint action (one scorer call per scorer object, normally exactly one); the
        results' observations are what the agents saw: feedback waits for :meth:`observe_many`."""

        def score(indices: list[int]) -> list[StepResult]:
            scorer = envs[indices[0]].scorer
            names = envs[indices[0]].possible_agents
            completions = [tuple(actions[i][n] for n in names) for i in indices]
            prompts = [tuple(envs[i].seen(n, actions[i]) for n in names) for i in indices]
            columns = columns_of([envs[i].item for i in indices])
            shown_completions, shown_prompts = reward_function_view(completions, prompts)
            with naming_failures("scorer", getattr(scorer, "__name__", type(scorer).__name__), columns):
                scored = scorer(completions=shown_completions, prompts=shown_prompts, **columns)
            rows = validate_scores(scorer, scored, len(indices))
            results = []
            for i, joint, row in zip(indices, completions, rows):
                env = envs[i]
                solved = env.feedback is None or bool(env.is_solved and env.is_solved(row))
                env.turn += 1
                last_turn = env.num_turns is not None and env.turn >= env.num_turns
                env.pending = None
                if not solved and not last_turn:
                    env.pending = (FeedbackRequest(env.item, joint, row, env.turn, env.agent_roles), dict(actions[i]))
                reward = float(row["reward"])
                results.append(
                    StepResult(
                        observations=dict(env.observations),
                        rewards={n: reward for n in names},
                        terminations={n: solved for n in names},
                        truncations={n: False for n in names},
                        infos={n: dict(row) for n in names},
                    )
                )
            return results

        return run_per_group(envs, lambda env: env.scorer, score)

    @classmethod
    def observe_many(
        cls, envs: Sequence["RewardFunctionEnv"], results: Sequence[StepResult]
    ) -> list[dict[str, Observation]]:
        """Each continuing branch's history plus its feedback, asked in one call per feedback source."""
        continuing = [env for env in envs if env.pending is not None]
        for indices in group_by_identity(continuing, lambda env: env.feedback):
            waiting = [continuing[i] for i in indices]
            texts = waiting[0].feedback([env.pending[0] for env in waiting])
            for env, per_agent in zip(waiting, texts):
                answers = env.pending[1]
                env.observations = {
                    n: env._next_observation(n, answers[n], text, answers)
                    for n, text in zip(env.possible_agents, per_agent)
                }
                env.pending = None
        return [dict(env.observations) for env in envs]


def reward_function_view(
    completions: list[JointAction], prompts: list[tuple[Observation, ...]]
) -> tuple[list[Any], list[Any]]:
    """What reward functions and scorers receive. A team: one tuple per joint action, one entry
    per agent (its completion; its prompt). One agent: as TRL passes them, its completion as a
    plain string, or as ``[{"role": "assistant", "content": ...}]`` where its prompt was chat
    messages, and its prompt as it was (so TRL's reward functions run unchanged)."""
    if not completions or len(completions[0]) != 1:
        return completions, prompts
    shown = [
        joint[0] if isinstance(seen[0], str) else [{"role": "assistant", "content": joint[0]}]
        for joint, seen in zip(completions, prompts)
    ]
    return shown, [seen[0] for seen in prompts]


def reward_env_factory(
    formatters: Sequence[Formatter], scorer: Scorer, agent_names: Sequence[str], **options: Any
) -> Callable[[Mapping[str, Any]], RewardFunctionEnv]:
    """item -> RewardFunctionEnv; ``options`` are its keyword arguments (feedback, is_solved, agent_roles,
    num_turns). Its ``reward_parts``: the scorer's (name, weight) pairs, if it has them."""
    factory = functools.partial(
        RewardFunctionEnv, formatters=formatters, scorer=scorer, agent_names=agent_names, **options
    )
    factory.reward_parts = getattr(scorer, "reward_parts", None)  # type: ignore[attr-defined]
    return factory
