"""MAGRPOTrainer: the public face of a run, in the shape of TRL's trainers.

It holds the run's state and hands each job to the module that does it:
    prepare.py   the set-up: environments, input checks, agents, sharding, precision, optimisers
    team.py      what a step works with (agents, optimisers, precision, sampler, baseline, objective)
    step.py      the algorithm: one MAGRPO step (rollout -> returns -> advantages -> per-agent update)
    run.py       the run around the steps (its RunState): resume, logs, checkpoints, signals, the final save
    eval/held_out.py   the held-out figures
"""

from __future__ import annotations

import dataclasses
import gc
import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from magrpo import distributed, run
from magrpo.config import MAGRPOConfig
from magrpo.critics.critic import save_critics
from magrpo.data import ItemOrder, as_items
from magrpo.errors import ConfigError, DatasetError, RewardError
from magrpo.eval.held_out import answer_held_out
from magrpo.feedback.base import Feedback
from magrpo.models import AgentPolicy, AgentSpec, agent_name, save_agent
from magrpo.overlap import RolloutsAhead
from magrpo.prepare import EnvFactory, RewardFuncs, build_env_factory, check_items, prepare_team
from magrpo.report import RunLog
from magrpo.run_folder import RunFolder
from magrpo.samples import item_refs
from magrpo.sampling.vllm_engine import check_vllm_installed, engine_process_ids
from magrpo.schedules import make_schedulers, step_schedulers
from magrpo.seeds import mix_seed
from magrpo.signal_watch import SignalWatch
from magrpo.step import SampledTree, StepOutput, learn, magrpo_step
from magrpo.step_metrics import step_metrics, step_samples
from magrpo.team import Team
from magrpo.trackers import check_trackers_installed
from magrpo.types import Formatter, Scorer


class MAGRPOTrainer:
    """Train a team of LLM agents with one joint reward.

    Example::

        trainer = MAGRPOTrainer(agents=["default", "default"], reward_func=my_reward, train_dataset=items,
                                formatters=[helper_prompt, main_prompt], args=MAGRPOConfig(max_steps=20))
        trainer.train()
        print(trainer.evaluate(held_out_items))

    Args:
        agents: one entry per agent: ``"default"`` (the bundled model), a model preset name, a
            local model directory, a Hub id, a loaded ``PreTrainedModel`` or ``(model, tokenizer)``;
            or already built :class:`AgentPolicy` objects.
        reward_func: a reward function or a list of them (summed, weighted by ``reward_weights``), see
            :class:`magrpo.types.RewardFunction`; a path among them is a reward model's local folder
            (:class:`magrpo.RewardModel`). ``reward_funcs=`` (TRL's name) is the same.
        model: instead of ``agents``, one agent (TRL's ``model=``); ``num_agents`` follows the agents given.
        scorer: instead of ``reward_func``, a function returning one dict per joint action with
            ``"reward"`` and any further figures that :meth:`evaluate` averages.
        train_dataset: a list of dicts or a ``datasets.Dataset``.
        eval_dataset: the held-out items, the same way.
        formatters: one callable per agent, item -> that agent's observation; without them, the
            items' ``prompt_<i>`` column for agent i, else their ``prompt`` column (as TRL reads it).
        env_factory: instead of formatters + reward, item -> :class:`MultiAgentEnv` (your own env).
        feedback: with ``num_turns > 1``, what each agent is told between turns
            (:mod:`magrpo.feedback`).
        show_earlier_answers: with ``protocol="sequential"``, how agent k is shown the answers of
            agents 0..k-1 of its joint action: ``(their answers in order, item) -> text`` added to its
            prompt (None: each answer under its agent's name).
        args: a :class:`MAGRPOConfig`.
        reward_funcs: TRL's name for ``reward_func``.
        reward_weights: one weight per reward function.
        is_solved: with ``num_turns > 1``, ``is_solved(score_row)`` ends a branch early.
        agent_roles: one role name per agent (e.g. "helper", "main"), the names feedback gives each
            agent's part; by default the agents' names.
    """

    def __init__(
        self,
        agents: Sequence[AgentSpec | AgentPolicy] | None = None,
        reward_func: RewardFuncs | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        formatters: Sequence[Formatter] | None = None,
        args: MAGRPOConfig | None = None,
        *,
        model: AgentSpec | None = None,
        reward_funcs: RewardFuncs | None = None,
        scorer: Scorer | None = None,
        env_factory: EnvFactory | None = None,
        reward_weights: Sequence[float] | None = None,
        feedback: Feedback | None = None,
        is_solved: Callable[[Mapping[str, Any]], bool] | None = None,
        agent_roles: Sequence[str] | None = None,
        show_earlier_answers: Callable[[Sequence[str], Mapping[str, Any]], str] | None = None,
    ) -> None:
        agents = _agents_given(agents, model)
        reward_func = _reward_given(reward_func, reward_funcs)
        # the team is the agents given: num_agents follows them (a per-agent list of another length is named)
        self.args = args or MAGRPOConfig(num_agents=len(agents))
        if len(agents) != self.args.num_agents:
            self.args = dataclasses.replace(self.args, num_agents=len(agents))
        check_trackers_installed(self.args.report_to)  # before any model loads
        if self.args.rollout_backend == "vllm" and self.args.vllm_mode == "colocate":  # a server's need no vLLM here
            check_vllm_installed()
        # the names the environments key observations by: those of pre-built agents, else agent_i
        self.agent_names = [a.name if isinstance(a, AgentPolicy) else agent_name(i) for i, a in enumerate(agents)]
        self.train_items = as_items(train_dataset, "train_dataset")
        self.eval_items = as_items(eval_dataset, "eval_dataset")
        if formatters is None and env_factory is None:  # TRL's prompt column (prompt_<i> for agent i)
            formatters = prompt_column_formatters(self.train_items or self.eval_items, len(agents))
        self.env_factory = build_env_factory(
            self.args,
            self.agent_names,
            reward_func=reward_func,
            scorer=scorer,
            formatters=formatters,
            env_factory=env_factory,
            reward_weights=reward_weights,
            feedback=feedback,
            is_solved=is_solved,
            agent_roles=agent_roles,
            show_earlier_answers=show_earlier_answers,
        )
        check_items(formatters, self.train_items, "train_dataset")
        check_items(formatters, self.eval_items, "eval_dataset")
        if self.args.num_threads:
            torch.set_num_threads(self.args.num_threads)
        distributed.init_from_env(self.args.device)  # under torchrun: join the other ranks
        torch.manual_seed(self.args.seed)
        self._team: Team | None = prepare_team(agents, self.args)
        self.team.reward_parts = getattr(self.env_factory, "reward_parts", None)  # normalize_then_sum's
        self.args = self.team.args  # rollout_backend="auto" resolved to the backend that samples
        #: where the run stands: steps taken, their metrics, the data position, the checkpoint cadence
        self.state = run.RunState(ItemOrder(len(self.train_items), self.args.seed), run.CheckpointCadence(self.args))
        #: what the last step did: its tree, returns, advantages, update and baseline figures
        self.last_step: StepOutput | None = None
        #: async_rollouts: the rollout sampled during the last update, and the next one's thread
        self.ahead = RolloutsAhead(self) if self.args.async_rollouts else None
        #: warns of steps that give no agent a learning signal (every group tied)
        self.signal_watch = SignalWatch(self.team.ranks)
        #: what the stop message tells the user to run to continue (the CLI sets its own command)
        self.resume_hint: str | None = None
        #: the answers of the last :meth:`evaluate`: one row per item and turn, each agent's chat
        #: messages and completion, the joint reward and the scorer's figures (:mod:`magrpo.samples`)
        self.eval_samples: list[dict[str, Any]] = []

    @property
    def team(self) -> Team:
        """The agents, optimisers, critics and ranks a step works with."""
        if self._team is None:
            raise RuntimeError(
                "this MAGRPOTrainer was closed (close(), or the end of its with-block): its models are let go; "
                "build a new trainer, or load the saved agents from its output_dir"
            )
        return self._team

    def close(self) -> None:
        """Let go of the models, optimisers, critics and sampling engines now, not at interpreter
        exit: their memory comes back, and under torchrun a sharded model's hold on the process
        group ends while the interpreter is whole (a gloo group still held at its teardown can
        abort a rank that finished). The run's files stay; the trainer cannot train or evaluate
        afterwards. Models the caller still holds (agents built and passed in) stay with the caller.
        ``with MAGRPOTrainer(...) as trainer:`` closes it at the end of the block."""
        if self._team is None:
            return
        if self.ahead is not None:
            self.ahead.close()
        for agent in self._team.agents:
            agent.rollout_engine = None  # the trainer's engines end with it
        self._team = self.last_step = self.ahead = None
        gc.collect()  # models in reference cycles go now, with the rest

    def __enter__(self) -> "MAGRPOTrainer":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def step(self) -> int:
        """The training steps taken (and resumed)."""
        return self.state.step

    @property
    def history(self) -> list[dict[str, Any]]:
        """One metrics dict per step taken in this process (a resumed run: from the run's log)."""
        return self.state.history

    @property
    def agents(self) -> list[AgentPolicy]:
        return self.team.agents

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return self.team.optimizers

    @optimizers.setter
    def optimizers(self, optimizers: Sequence[torch.optim.Optimizer]) -> None:  # e.g. another optimiser class
        for critic in self.team.critics:  # a head on an agent's model trains in that agent's optimiser
            given = {id(p) for group in optimizers[critic.host].param_groups for p in group["params"]}
            if critic.model is None and any(id(p) not in given for p in critic.head.parameters()):
                raise ConfigError(
                    f"the optimiser given for {self.team.agents[critic.host].name} does not train the value head of "
                    f"{critic.name} that sits on its model: add trainer.team.critics[...].head.parameters() to it "
                    "(as a parameter group at critic_learning_rate)"
                )
        self.team.optimizers = list(optimizers)
        self.team.schedulers = make_schedulers(self.team.optimizers, self.args)

    def train(
        self,
        log: RunLog | None = None,
        progress: bool | str = True,
        resume_from_checkpoint: str | Path | bool | None = None,
    ) -> list[dict[str, Any]]:
        """Train until ``max_steps``; returns one metrics dict per step.

        ``progress``: True shows a progress bar on a terminal and prints one plain line per step
        elsewhere (a log file); ``"lines"`` the plain lines; False nothing.

        ``resume_from_checkpoint``: a checkpoint folder, a run folder (its newest complete
        checkpoint), or True (this run's ``output_dir``): weights, optimiser states, random states
        and the data position come back, and the run continues exactly where it stopped. A full
        checkpoint is written every ``save_steps`` steps or ``save_minutes`` minutes (and at the end
        with ``save_final_checkpoint``).
        SIGTERM or a first Ctrl-C finishes the current step, writes a checkpoint and stops
        (SystemExit 143 / KeyboardInterrupt); a second Ctrl-C aborts at once.
        """
        return run.train_loop(self, log, progress, resume_from_checkpoint)

    def next_batch(self) -> list[dict[str, Any]]:
        """This rank's batch_size items of the step's global batch: the next batch_size x
        world_size items of a seeded shuffle (the same on every rank), reshuffled at every epoch."""
        return [self.train_items[i] for i in self.next_batch_indices()]

    def next_batch_indices(self) -> list[int]:
        """The places in ``train_dataset`` of the items :meth:`next_batch` would give (and takes them)."""
        size, ranks = self.args.batch_size, self.team.ranks
        drawn = [self.state.item_order.next() for _ in range(size * ranks.world_size)]
        return drawn[ranks.rank * size : (ranks.rank + 1) * size]

    def train_step(
        self, items: Sequence[Mapping[str, Any]], indices: Sequence[int] | None = None
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """One MAGRPO step on ``items``; returns the step's metrics and its samples (the step itself:
        :attr:`last_step`; the samples: :mod:`magrpo.samples`, their ``item`` the items' places in
        their data set, ``indices``, where given)."""
        refs = item_refs(items, indices if indices is not None else [None] * len(items))
        return self._step(
            lambda: magrpo_step(self.team, [self.env_factory(item) for item in items], self.state.step), refs
        )

    def train_step_on(
        self, sampled: SampledTree, indices: Sequence[int] | None = None
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """One step that learns from a tree sampled earlier, with older weights (``async_rollouts``);
        its metrics say how many policy versions old it was (``rollout_staleness``). ``indices``:
        the places in ``train_dataset`` of the tree's items, for its samples."""
        refs = None if indices is None else item_refs([self.train_items[i] for i in indices], indices)
        metrics, samples = self._step(lambda: learn(self.team, sampled), refs)
        metrics["rollout_staleness"] = self.state.step - 1 - sampled.version
        return metrics, samples

    def _step(
        self, run_step: Callable[[], StepOutput], refs: Sequence[Mapping[str, Any]] | None
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        torch.manual_seed(mix_seed(self.args.seed, self.state.step))
        engines = engine_process_ids(self.team.agents)  # vLLM engines in processes of their own
        run.reset_peak_memory(engines)
        try:
            out = run_step()
        except RewardError as exc:  # name the step; the run keeps its last checkpoint (magrpo.run)
            raise RewardError(f"step {self.state.step + 1}: {exc}") from exc
        self.state.step += 1
        self.team.after_step(self.state.step)
        self.last_step = out
        self.signal_watch.observe(out, self.state.step)
        metrics = {**step_metrics(self.team, out, self.state.step), **run.peak_memory_figures(engines)}
        step_schedulers(self.team.schedulers)  # after the metrics, which log the rate this step used
        return metrics, step_samples(out, refs)

    def evaluate(self, dataset: Any = None, max_items: int | None = None, batch_size: int = 8) -> dict[str, float]:
        """Greedy (or ``eval_temperature``) decoding, one joint answer per item, each turn's
        figures averaged: ``{"reward": ..., <scorer figures>..., "turn_2/reward": ...}``; the
        answers themselves are then :attr:`eval_samples`.
        Under torchrun every rank calls it and answers its share of the items."""
        items = as_items(dataset, "dataset") if dataset is not None else self.eval_items
        limit = self.args.eval_max_items if max_items is None else max_items
        items = items if limit is None else items[:limit]
        if not items:
            raise ConfigError(f"no evaluation items: pass eval_dataset or dataset (max_items={limit})")
        figures, self.eval_samples = answer_held_out(self.team, self.env_factory, items, batch_size)
        return figures

    def checkpoint(self, directory: str | Path) -> Path:
        """A full, resumable checkpoint of this run (see :mod:`magrpo.checkpoint`); older ones
        beyond ``save_total_limit`` are deleted."""
        return run.write_checkpoint(self, directory)

    def save(self, directory: str | Path | None = None) -> Path:
        """Each agent to ``directory/agent_i`` (transformers or peft loads it directly), each
        critic's value head (IAC, MAAC) to ``directory/<critic>/value_head.safetensors`` (and its
        own model, where it has one, beside it). Sharded
        agents: every rank calls it (their weights are gathered), rank 0 writes."""
        directory = Path(directory or RunFolder(self.args.output_dir).final)
        team = self.team
        whole = team.ranks.whole_states(team.agents, team.optimizers, with_optimizers=False)
        if team.ranks.sharded and not team.ranks.is_main:
            return directory
        for i, agent in enumerate(team.agents):
            save_agent(agent, directory / agent.name, state_dict=whole[i][0] if whole else None)
        save_critics(team.critics, directory)  # IAC, MAAC
        (directory / "trainer_state.json").write_text(
            json.dumps({"step": self.state.step, "agents": [a.name for a in team.agents]}, indent=2)
        )
        return directory


def _agents_given(agents: Sequence[Any] | None, model: Any) -> list[Any]:
    """``agents``, or TRL's ``model=`` as a team of one."""
    if (agents is None) == (model is None):
        raise ConfigError(
            "give the team as agents=[...] (one entry per agent), or one agent as model=... (as TRL's GRPOTrainer)"
            + (", not both" if agents is not None else "")
        )
    return [model] if agents is None else list(agents)


def _reward_given(reward_func: RewardFuncs | None, reward_funcs: RewardFuncs | None) -> RewardFuncs | None:
    """``reward_func``, or TRL's name for it, ``reward_funcs``."""
    if reward_func is not None and reward_funcs is not None:
        raise ConfigError("give reward_func or reward_funcs (TRL's name for the same), not both")
    return reward_func if reward_func is not None else reward_funcs


def prompt_column_formatters(items: Sequence[Mapping[str, Any]], num_agents: int) -> list[Formatter] | None:
    """Without formatters, each agent's observation is a column of the items, as TRL reads its
    ``prompt`` column: agent i's ``prompt_<i>`` where the items have one, else ``prompt`` (a text
    or a list of chat messages). None where the items have neither."""
    columns = set(items[0]) if items else set()
    chosen = [f"prompt_{i}" if f"prompt_{i}" in columns else "prompt" for i in range(num_agents)]
    if not all(column in columns for column in chosen):
        return None
    return [lambda item, column=column: item[column] for column in chosen]


__all__ = ["DatasetError", "MAGRPOTrainer", "prompt_column_formatters"]
