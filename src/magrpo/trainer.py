"""MAGRPOTrainer: the MAGRPO loop, readable top to bottom.

One step (``train_step``), one named function per arrow of the data flow:
    items      = next_batch()                     the next ``batch_size`` dataset items
    envs       = env_factory(item)                one environment per item (formatters + reward, or yours)
    turns      = expand_tree(agents, envs, ...)   every agent samples G completions per node
                                                  (sample_team); the joint actions step the
                                                  environment (step_joint_actions): joint rewards
                                                  and next observations; up to num_turns
    returns    = tree_returns(rewards)            reward (+ discount * mean of the children's returns)
    advantages = agent_advantages(returns)        per agent, centred over the siblings of each node
    update     = update_agent(i, ...)             per agent: -sum A * log pi_i(c_i | o_i) / normaliser,
                                                  AdamW, gradient clipping
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from magrpo import distributed, sharding
from magrpo.advantages import agent_advantages, tree_returns
from magrpo.checkpoint import check_resumable_config, load_checkpoint, prune_checkpoints, resolve_resume, save_checkpoint
from magrpo.config import MAGRPOConfig
from magrpo.data import as_items
from magrpo.envs.base import MultiAgentEnv
from magrpo.envs.check import check_env
from magrpo.envs.reward_env import reward_env_factory, scorer_from_reward_funcs
from magrpo.errors import ConfigError, DatasetError
from magrpo.eval.figures import final_figures_per_turn, mean_figures, turn_mean_figures
from magrpo.feedback.base import Feedback
from magrpo.logprobs import completion_token_logprobs, scoring_mode, shared_prompt_token_logprobs
from magrpo.loss import ImportanceWeightTally, loss_normaliser, policy_gradient_loss_sum, truncated_importance_weights
from magrpo.models import AgentPolicy, AgentSpec, agent_name, attach_sampling_copies, build_agents, save_agent
from magrpo.report import RunLog, progress_bar
from magrpo.sampling import Rollout, SampleFn, make_sampler
from magrpo.trackers import Trackers, check_trackers_installed
from magrpo.tree import Turn, expand_tree
from magrpo.types import Formatter, Scorer


EnvFactory = Callable[[Mapping[str, Any]], MultiAgentEnv]


class MAGRPOTrainer:
    """Train a team of LLM agents with one joint reward.

    Args:
        agents: one entry per agent: ``"default"`` (the bundled model), a model preset name, a
            local model directory, a Hub id, a loaded ``PreTrainedModel`` or ``(model, tokenizer)``;
            or already built :class:`AgentPolicy` objects.
        reward_func: a reward function or a list of them (summed), see :class:`magrpo.types.RewardFunction`.
        scorer: instead of ``reward_func``, a function returning one dict per joint action with
            ``"reward"`` and any further figures that :meth:`evaluate` averages.
        train_dataset / eval_dataset: lists of dicts or ``datasets.Dataset`` objects.
        formatters: one callable per agent, item -> that agent's observation.
        env_factory: instead of formatters + reward, item -> :class:`MultiAgentEnv` (your own env).
        feedback: with ``num_turns > 1``, what each agent is told between turns
            (:mod:`magrpo.feedback`); ``is_solved(score_row)`` ends a branch early.
        args: a :class:`MAGRPOConfig`.
    """

    def __init__(
        self,
        agents: Sequence[AgentSpec | AgentPolicy],
        reward_func: Callable[..., Sequence[float]] | Sequence[Callable[..., Sequence[float]]] | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        formatters: Sequence[Formatter] | None = None,
        args: MAGRPOConfig | None = None,
        *,
        scorer: Scorer | None = None,
        env_factory: EnvFactory | None = None,
        reward_weights: Sequence[float] | None = None,
        feedback: Feedback | None = None,
        is_solved: Callable[[Mapping[str, Any]], bool] | None = None,
        agent_roles: Sequence[str] | None = None,
    ) -> None:
        self.args = args or MAGRPOConfig(num_agents=len(agents))
        if len(agents) != self.args.num_agents:
            raise ConfigError(f"{len(agents)} agents given but num_agents={self.args.num_agents}")
        check_trackers_installed(self.args.report_to)  # before any model loads
        # the names the environments key observations by: those of pre-built agents, else agent_i
        self._agent_names = [a.name if isinstance(a, AgentPolicy) else agent_name(i) for i, a in enumerate(agents)]
        self.train_items = as_items(train_dataset, "train_dataset")
        self.eval_items = as_items(eval_dataset, "eval_dataset")
        self.env_factory = self._build_env_factory(
            reward_func, scorer, formatters, env_factory, reward_weights, feedback, is_solved, agent_roles
        )
        self._formatters = formatters
        self._check_items(self.train_items, "train_dataset")
        self._check_items(self.eval_items, "eval_dataset")
        if self.args.num_threads:
            torch.set_num_threads(self.args.num_threads)
        distributed.init_from_env(self.args.device)  # under torchrun: join the other ranks
        torch.manual_seed(self.args.seed)
        self.agents = self._build_agents(agents)
        self._sharded = self._shard_agents()
        self._warn_if_weights_cannot_learn()
        self._autocast_dtype = self._resolve_autocast()
        self._attach_sampling_copies()
        self.optimizers = [self._make_optimizer(agent) for agent in self.agents]
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self._order_rng = random.Random(self.args.seed)
        self._order: list[int] = []
        #: what the stop message tells the user to run to continue (the CLI sets its own command)
        self.resume_hint: str | None = None
        self._stop_signal: int | None = None
        self._last_checkpoint = (0, time.monotonic())  # (step, when)

    # ------------------------------------------------------------------ set-up checks
    def _build_env_factory(
        self, reward_func, scorer, formatters, env_factory, reward_weights, feedback, is_solved, agent_roles
    ) -> EnvFactory:
        n = self.args.num_agents
        names = self._agent_names
        if env_factory is not None:
            if reward_func is not None or scorer is not None:
                raise ConfigError("give either env_factory or reward_func/scorer, not both")
            return env_factory
        if self.args.num_turns > 1 and feedback is None:
            raise ConfigError(
                f"num_turns={self.args.num_turns} needs feedback between turns: pass feedback= "
                "(ExecutionFeedback, ReviewerFeedback or CallableFeedback) or an env_factory"
            )
        if (reward_func is None) == (scorer is None):
            raise ConfigError("give exactly one of reward_func or scorer (or an env_factory)")
        if formatters is None or len(formatters) != n:
            got = "none" if formatters is None else len(formatters)
            raise ConfigError(f"formatters: {got} given for num_agents={n}; give one formatter per agent")
        if scorer is None:
            funcs = list(reward_func) if isinstance(reward_func, (list, tuple)) else [reward_func]
            scorer = scorer_from_reward_funcs(funcs, reward_weights)
        return reward_env_factory(
            formatters, scorer, names, feedback=feedback if self.args.num_turns > 1 else None,
            is_solved=is_solved, agent_roles=agent_roles, num_turns=self.args.num_turns,
        )

    def _check_items(self, items: list[dict[str, Any]], what: str) -> None:
        """Format every item once now, so a missing field stops the run before any compute."""
        if not self._formatters:
            return
        for index, item in enumerate(items):
            for agent, fmt in enumerate(self._formatters):
                try:
                    fmt(item)
                except KeyError as exc:
                    raise DatasetError(
                        f"{what}[{index}]: the formatter of agent_{agent} needs field {exc.args[0]!r}, "
                        f"which the item lacks; the item has fields {sorted(item)}"
                    ) from exc

    def _build_agents(self, agents: Sequence[Any]) -> list[AgentPolicy]:
        if all(isinstance(a, AgentPolicy) for a in agents):
            return list(agents)
        a = self.args
        return build_agents(
            agents,
            device=list(a.agent_devices) if a.agent_devices else distributed.rank_device(a.device),
            dtype=a.dtype,
            use_lora=a.lora_per_agent(),
            lora_r=a.lora_r,
            lora_alpha=a.lora_alpha,
            lora_dropout=a.lora_dropout,
            lora_target_modules=a.lora_target_modules,
            gradient_checkpointing=a.gradient_checkpointing,
        )

    def _shard_agents(self) -> bool:
        """``data_parallel="shard"`` under torchrun: each agent's model split over the ranks (FSDP2),
        before its optimiser is built on the shards."""
        if self.args.data_parallel != "shard" or not distributed.active():
            return False
        sharding.check_shardable(self.agents)
        for agent in self.agents:
            sharding.shard_model(agent.model)
        return True

    def _whole_weights(self) -> contextlib.AbstractContextManager:
        """Sharded agents' weights gathered whole for sampling (nothing to do when replicated)."""
        return sharding.gathered(agent.model for agent in self.agents) if self._sharded else contextlib.nullcontext()

    @property
    def _concurrent_agents(self) -> bool:
        # generate() draws from the one global RNG: only the fast sampler may run in threads
        return self.args.concurrent_agents and self.args.rollout_backend == "fast"

    def _warn_if_weights_cannot_learn(self) -> None:
        low = sorted({str(p.dtype).removeprefix("torch.") for agent in self.agents for p in agent.trainable_parameters()
                      if p.dtype in (torch.bfloat16, torch.float16)})
        if low:
            warnings.warn(
                f"the trainable weights are {', '.join(low)}: AdamW updates smaller than a weight's rounding step "
                "(about 1/256 of its size in bfloat16) round away, so at lr ~1e-5 most of every update is lost and "
                "the run barely learns; train float32 weights (dtype='auto' or 'float32') with autocast='bfloat16' "
                "for bf16 speed",
                stacklevel=3,
            )

    def _resolve_autocast(self) -> torch.dtype | None:
        """The dtype of the update's forward passes under torch.autocast, or None (the weights' own)."""
        choice = self.args.autocast
        if choice == "auto":
            choice = "bfloat16" if self._on_cuda else "no"
        return None if choice == "no" else getattr(torch, choice)

    def _rollout_dtype(self) -> str:
        """``rollout_dtype`` with "auto" resolved: a bf16 sampling copy on CUDA (fast backend), else "same"."""
        if self.args.rollout_dtype != "auto":
            return self.args.rollout_dtype
        if self._sharded:  # a whole sampling copy on every rank is what sharding avoids
            return "same"
        return "bfloat16" if self._on_cuda and self.args.rollout_backend == "fast" else "same"

    @property
    def _on_cuda(self) -> bool:
        """Some agent trains on a GPU: what the "auto" precision choices resolve by."""
        return any(agent.device.type == "cuda" for agent in self.agents)

    def _attach_sampling_copies(self) -> None:
        """A reduced-precision sampling copy per model when ``rollout_dtype`` asks for one that
        differs from the training weights' dtype ("same", or the same dtype: no copy, exact)."""
        if self._rollout_dtype() == "same":
            return
        dtype = getattr(torch, self._rollout_dtype())
        if any(agent.model.dtype != dtype for agent in self.agents):
            attach_sampling_copies(self.agents, dtype)

    def _sampler(self, *, training: bool) -> SampleFn:
        """Training samples G completions at ``temperature`` (with the sampling copy, if any);
        evaluation one answer at ``eval_temperature`` with the training weights."""
        a = self.args
        return make_sampler(
            num_generations=a.num_generations if training else 1,
            max_new_tokens=a.max_new_tokens,
            temperature=a.temperature if training else a.eval_temperature,
            top_p=a.top_p,
            backend=a.rollout_backend,
            use_sampling_copy=training,
        )

    def _make_optimizer(self, agent: AgentPolicy) -> torch.optim.Optimizer:
        a = self.args
        return torch.optim.AdamW(
            agent.trainable_parameters(), lr=a.learning_rate, betas=(a.adam_beta1, a.adam_beta2), weight_decay=a.weight_decay
        )

    # ------------------------------------------------------------------ the loop
    def train(
        self, log: RunLog | None = None, progress: bool = True, resume_from_checkpoint: str | Path | bool | None = None
    ) -> list[dict[str, Any]]:
        """Train until ``max_steps``; returns one metrics dict per step.

        ``resume_from_checkpoint``: a checkpoint folder, a run folder (its newest complete
        checkpoint), or True (this run's ``output_dir``): weights, optimiser states, random states
        and the data position come back, and the run continues exactly where it stopped. A full
        checkpoint is written every ``save_steps`` steps or ``save_minutes`` minutes and at the end.
        SIGTERM or a first Ctrl-C finishes the current step, writes a checkpoint and stops
        (SystemExit 143 / KeyboardInterrupt); a second Ctrl-C aborts at once.
        """
        if not self.train_items:
            raise ConfigError("train_dataset is empty")
        # the first item's environment must keep the contract before any compute is spent on it
        # (every step's results are checked as they come: tree.step_joint_actions)
        check_env(self.env_factory(self.train_items[0]), self._agent_names, step=False)
        resumed = self._resume(resume_from_checkpoint) if resume_from_checkpoint else None
        main = distributed.is_main()  # rank 0 alone writes files and prints
        trackers = Trackers(self.args.report_to if main else [], self.args.output_dir, self.args.to_dict())
        log = log or RunLog(self.args.output_dir, self.args, resume=resumed is not None, writes=main)
        if resumed is not None:
            self.history = log.resume_at(self.step)
            if main:
                print(f"resumed from {resumed} at step {self.step}", flush=True)
        if main:
            ranks = f" on {distributed.world_size()} ranks" if distributed.active() else ""
            print(f"plan: {self.args.plan().describe()}{ranks}", flush=True)
        with progress_bar(progress and main, self.args.max_steps, completed=self.step) as bar, self._stop_on_signals():
            try:
                while self.step < self.args.max_steps:
                    metrics, samples = self.train_step(self.next_batch())
                    self.history.append(metrics)
                    log.metrics(metrics)
                    trackers.log(metrics, self.step)
                    if self.args.log_samples_steps and self.step % self.args.log_samples_steps == 0:
                        log.samples(self.step, samples)
                    if distributed.any_rank(self._stop_signal is not None) and self._stop_signal is None:
                        self._stop_signal = signal.SIGTERM  # another rank was asked to stop: stop together
                    # decided together: the minutes since the last save differ a little between ranks
                    if distributed.any_rank(self._checkpoint_due()) or self._stop_signal is not None:
                        self.checkpoint(log.checkpoint_dir(self.step))
                    bar(metrics)
                    if self._stop_signal is not None:
                        self._stop(log)
            except _Stopped as stopped:
                raise stopped.exit from None
            finally:
                trackers.close()
                # a run that died (an error; not a clean stop, nor a second Ctrl-C) still leaves the
                # weights of its last step when the last full checkpoint is older
                died = self.step < self.args.max_steps and self._stop_signal is None
                # (not when sharded: gathering the weights needs every rank, and the others may be gone)
                if died and self.step > self._last_checkpoint[0] and main and not self._sharded:
                    self.save(log.checkpoint_dir(self.step, suffix="-interrupted"))
        saves_checkpoints = bool(self.args.save_steps or self.args.save_minutes)  # both 0: final weights only
        if saves_checkpoints and self._last_checkpoint[0] != self.step:
            self.checkpoint(log.checkpoint_dir(self.step))
        if main or self._sharded:
            self.save(log.final_dir())
        if main:
            log.plot_rewards(self.history)
        distributed.barrier()  # the other ranks return once the run's files are written
        return self.history

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self, directory: str | Path) -> Path:
        """A full, resumable checkpoint of this run (see :mod:`magrpo.checkpoint`); older ones
        beyond ``save_total_limit`` are deleted."""
        whole = self._whole_states(with_optimizers=True)  # sharded: gathered by every rank
        if distributed.is_main():  # the same weights and states on every rank (or gathered): one writes them
            save_checkpoint(
                directory, agents=self.agents, optimizers=self.optimizers, trainer_state=self._trainer_state(), config=self.args,
                whole_states=whole,
            )
            prune_checkpoints(Path(directory).parent.parent, self.args.save_total_limit)
        distributed.barrier()  # a checkpoint is complete before any rank goes on
        self._last_checkpoint = (self.step, time.monotonic())
        return Path(directory)

    def _whole_states(self, *, with_optimizers: bool) -> list[tuple[dict, dict | None]] | None:
        """Sharded: each agent's (weights, optimiser state or None) gathered whole, for rank 0 to
        write (a collective: every rank calls it). Replicated: None, the agents hold them whole."""
        if not self._sharded:
            return None
        return [(sharding.full_weights(agent.model, only_adapter=agent.adapter is not None),
                 sharding.full_optimizer_state(optimizer) if with_optimizers else None)
                for agent, optimizer in zip(self.agents, self.optimizers)]

    def _checkpoint_due(self) -> bool:
        a = self.args
        by_steps = a.save_steps and self.step % a.save_steps == 0
        by_time = a.save_minutes and time.monotonic() - self._last_checkpoint[1] >= 60 * a.save_minutes
        return bool(by_steps or by_time)

    def _trainer_state(self) -> dict[str, Any]:
        version, state, gauss = self._order_rng.getstate()
        return {"step": self.step, "order": list(self._order), "order_rng": [version, list(state), gauss]}

    def _resume(self, target: str | Path | bool) -> Path:
        path = resolve_resume(self.args.output_dir if target is True else target)
        check_resumable_config(path, self.args)
        state = load_checkpoint(path, agents=self.agents, optimizers=self.optimizers)
        self.step = int(state["step"])
        self._order = [int(i) for i in state["order"]]
        version, rng_state, gauss = state["order_rng"]
        self._order_rng.setstate((version, tuple(rng_state), gauss))
        self._last_checkpoint = (self.step, time.monotonic())
        return path

    @contextlib.contextmanager
    def _stop_on_signals(self) -> Iterator[None]:
        """SIGTERM and a first Ctrl-C ask for a clean stop after the current step; a second
        Ctrl-C raises KeyboardInterrupt at once. Only the main thread can take signals."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signum: int, frame: Any) -> None:
            if self._stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self._stop_signal = signum
            print(f"\n{signal.Signals(signum).name}: finishing step {self.step + 1}, then saving a checkpoint "
                  "(Ctrl-C again to abort at once)", flush=True)

        previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _stop(self, log: RunLog) -> None:
        hint = self.resume_hint or f"trainer.train(resume_from_checkpoint={str(log.dir)!r})"
        print(f"stopped after step {self.step}; checkpoint {log.checkpoint_dir(self.step)}\nresume with: {hint}", flush=True)
        exit_ = KeyboardInterrupt() if self._stop_signal == signal.SIGINT else SystemExit(128 + int(self._stop_signal))
        raise _Stopped(exit_)

    def next_batch(self) -> list[dict[str, Any]]:
        """This rank's batch_size items of the step's global batch: the next batch_size x
        world_size items of a seeded shuffle (the same on every rank), reshuffled at every epoch."""
        batch = []
        for _ in range(self.args.batch_size * distributed.world_size()):
            if not self._order:
                self._order = list(range(len(self.train_items)))
                self._order_rng.shuffle(self._order)
            batch.append(self.train_items[self._order.pop()])
        start = distributed.rank() * self.args.batch_size
        return batch[start : start + self.args.batch_size]

    def train_step(self, items: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """One MAGRPO step on ``items``; returns the step's metrics and its samples."""
        a = self.args
        torch.manual_seed(a.seed * 1_000_003 + self.step)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        _reset_peak_host_memory()
        started = time.perf_counter()

        envs = [self.env_factory(item) for item in items]
        with self._whole_weights():
            turns = expand_tree(
                self.agents,
                envs,
                sample=self._sampler(training=True),
                joint_mode=a.joint_mode,
                num_generations=a.num_generations,
                num_turns=a.num_turns,
                expand=a.expand,
                expand_k=a.expand_k,
                early_stop_reward=a.early_stop_reward,
                concurrent_agents=self._concurrent_agents,
                # each item's place in the step's global batch keys its random stream: the same
                # samples whichever rank, and whichever other items, it is sampled with
                item_keys=[self.step * len(items) * distributed.world_size() + distributed.rank() * len(items) + k
                           for k in range(len(items))],
            )
        rollout_seconds = time.perf_counter() - started

        returns = tree_returns(
            [t.rewards for t in turns], [t.children for t in turns], a.discount,
            solved=[t.solved for t in turns], num_turns=a.num_turns,
        )
        update_started = time.perf_counter()
        agent_metrics = []
        for i in range(len(self.agents)):
            advantages = [
                agent_advantages(
                    ret, agent=i, num_agents=len(self.agents), joint_mode=a.joint_mode,
                    scaling=a.advantage_scaling, cross_aggregation=a.cross_aggregation, baseline=a.advantage_baseline,
                )
                for ret in returns
            ]
            figures = self.update_agent(i, [t.rollouts[i] for t in turns], advantages)
            agent_metrics.append({**figures, **_advantage_figures(advantages, a.num_generations)})
        update_seconds = time.perf_counter() - update_started

        self.step += 1
        metrics = self._step_metrics(turns, agent_metrics, rollout_seconds, update_seconds)
        return metrics, self._step_samples(turns, returns)

    def update_agent(self, index: int, rollouts: Sequence[Rollout], advantages: Sequence[torch.Tensor]) -> dict[str, float]:
        """One AdamW step of agent ``index`` on its completions of every turn: ``rollouts[t]`` and
        ``advantages[t]`` (``[P_t * G]``, row p * G + g) are its samples and their advantages at turn t.

        The loss is normalised over the whole step (all turns, all micro-batches), so splitting the
        batch changes nothing but memory. Completions with advantage exactly 0 contribute exactly 0
        gradient and are not run through the model; when every completion has advantage 0 (all
        rewards of every group equal) there is no gradient and the agent is left as it was (no
        optimiser step, so no momentum or weight-decay move without a learning signal).
        Gradients are freed after the step: between updates an agent holds none.
        """
        a = self.args
        agent = self.agents[index]
        optimizer = self.optimizers[index]
        all_masks = torch.cat([_pad_right(r.completion_mask, max(x.completion_mask.shape[1] for x in rollouts)) for r in rollouts])
        # over the whole global step: every rank's completions (or tokens) count
        normaliser = distributed.sum_float(loss_normaliser(all_masks, a.loss_aggregation), agent.device)
        params = agent.trainable_parameters()
        optimizer.zero_grad(set_to_none=True)
        # micro-batches of the completions that carry a learning signal
        work = [(rollout, adv, chunk) for rollout, adv in zip(rollouts, advantages)
                for chunk in torch.nonzero(adv != 0).flatten().split(a.update_micro_batch_size) if len(chunk)]
        passes = int(distributed.sum_float(len(work), agent.device))
        if not passes:  # no rank has a signal: no pass, no step
            return {"loss": 0.0, "grad_norm": 0.0}
        # sharded: every forward/backward is a collective, so every rank runs as many
        idle = int(distributed.max_float(len(work), agent.device)) - len(work) if self._sharded else 0
        loss_total = 0.0
        weights = ImportanceWeightTally()
        # dropout off: the update scores the policy that sampled (which samples in eval mode)
        autocast = (torch.autocast(agent.device.type, dtype=self._autocast_dtype) if self._autocast_dtype is not None
                    else contextlib.nullcontext())
        with agent.active() as active, scoring_mode(active) as model, autocast:
            for rollout, adv, chunk in work:
                loss = self._chunk_loss(agent, model, rollout, adv, chunk, weights) / normaliser
                loss.backward()
                loss_total += float(loss.detach())
            for _ in range(idle):
                sharding.idle_pass(model, agent.device)
        if distributed.active():  # the global step's gradient: the sum of every rank's share
            loss_total = distributed.sum_float(loss_total, agent.device)
            if not self._sharded:  # sharded: the reduce-scatter of each backward summed them
                distributed.sum_gradients(params)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, a.max_grad_norm)
        if hasattr(grad_norm, "full_tensor"):  # sharded: a norm over every rank's shards
            grad_norm = grad_norm.full_tensor()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        agent.sync_sampling_copy()
        return {"loss": loss_total, "grad_norm": float(grad_norm), **weights.figures()}

    def _chunk_loss(
        self,
        agent: AgentPolicy,
        model: torch.nn.Module,
        rollout: Rollout,
        adv: torch.Tensor,
        rows: torch.Tensor,
        tally: ImportanceWeightTally,
    ) -> torch.Tensor:
        device = rollout.completion_ids.device
        rows_d = rows.to(device)
        # the distinct prompts of this chunk, and which one each row continues
        prompts, prompt_index = torch.unique(rows_d // rollout.num_generations, return_inverse=True)
        prompt_ids, prompt_mask = _trim_left(rollout.prompt_ids[prompts], rollout.prompt_mask[prompts])
        completion_ids, mask = _trim_right(rollout.completion_ids[rows_d], rollout.completion_mask[rows_d])
        temperature = self.args.temperature
        # sharded: every rank's micro-batch must make the same collectives, so one model pass each
        shared = self.args.share_prompt_in_update and not self.args.gradient_checkpointing and not self._sharded
        if shared and len(prompts) < len(rows_d):
            logprobs = shared_prompt_token_logprobs(
                model, prompt_ids, prompt_mask, prompt_index, completion_ids, mask, temperature, self.args.logprob_chunk_size
            )
        else:
            logprobs = completion_token_logprobs(
                model, prompt_ids[prompt_index], prompt_mask[prompt_index], completion_ids, mask, temperature,
                self.args.logprob_chunk_size,
            )
        weights = None
        if agent.sampling_copy is not None:  # another precision sampled: correct for the gap
            if rollout.token_logprobs is None:
                raise ConfigError(
                    f"agent {agent.name!r} samples with a {self._rollout_dtype()} copy, but its rollout carries no "
                    "sampling-time log-probabilities; use rollout_backend='fast' or rollout_dtype='same'"
                )
            sampler_logprobs = rollout.token_logprobs[rows_d][:, : completion_ids.shape[1]]
            weights = truncated_importance_weights(logprobs, sampler_logprobs, self.args.rollout_is_cap)
            tally.add(weights, mask, self.args.rollout_is_cap)
        return policy_gradient_loss_sum(logprobs, mask, adv[rows].to(device=device, dtype=torch.float32), weights)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, dataset: Any = None, max_items: int | None = None, batch_size: int = 8) -> dict[str, float]:
        """Greedy (or ``eval_temperature``) decoding, one joint answer per item, each turn's
        figures averaged: ``{"reward": ..., <scorer figures>..., "turn_2/reward": ...}``.
        Under torchrun every rank calls it and answers its share of the items."""
        items = as_items(dataset, "dataset") if dataset is not None else self.eval_items
        limit = self.args.eval_max_items if max_items is None else max_items
        items = items if limit is None else items[:limit]
        if not items:
            raise ConfigError(f"no evaluation items: pass eval_dataset or dataset (max_items={limit})")
        a = self.args
        sampler = self._sampler(training=False)
        mine = distributed.rank_slice(items)
        per_turn: list[list[dict[str, float]]] = [[] for _ in range(a.num_turns)]
        with self._whole_weights():
            for start in range(0, len(mine), batch_size):
                envs = [self.env_factory(item) for item in mine[start : start + batch_size]]
                turns = expand_tree(self.agents, envs, sample=sampler, joint_mode="aligned", num_generations=1,
                                    num_turns=a.num_turns, early_stop_reward=a.early_stop_reward,
                                    concurrent_agents=self._concurrent_agents)
                for t, figures in enumerate(final_figures_per_turn(turns, len(envs), a.num_turns)):
                    per_turn[t].extend(figures)
        if distributed.active():  # every item's figures, in the items' order
            shares = distributed.gather_objects(per_turn)
            per_turn = [[row for share in shares for row in share[t]] for t in range(a.num_turns)]
        out: dict[str, float] = {"items": float(len(items))}
        out.update(mean_figures(per_turn[-1]))  # the team's final answers
        if a.num_turns > 1:  # what each turn of feedback adds
            for t, rows in enumerate(per_turn):
                out.update({f"turn_{t + 1}/{k}": v for k, v in mean_figures(rows).items()})
        return out

    # ------------------------------------------------------------------ saving
    def save(self, directory: str | Path | None = None) -> Path:
        """Each agent to ``directory/agent_i`` (transformers or peft loads it directly). Sharded
        agents: every rank calls it (their weights are gathered), rank 0 writes."""
        directory = Path(directory or Path(self.args.output_dir) / "final")
        whole = self._whole_states(with_optimizers=False)
        if self._sharded and not distributed.is_main():
            return directory
        for i, agent in enumerate(self.agents):
            save_agent(agent, directory / agent.name, state_dict=whole[i][0] if whole else None)
        (directory / "trainer_state.json").write_text(
            json.dumps({"step": self.step, "agents": [a.name for a in self.agents]}, indent=2)
        )
        return directory

    # ------------------------------------------------------------------ figures
    def _step_metrics(self, turns: list[Turn], agent_metrics: list[dict[str, float]], rollout_s: float, update_s: float) -> dict[str, Any]:
        first = torch.cat(distributed.gather_tensors(turns[0].rewards.flatten()))  # every rank's items
        tokens = int(distributed.sum_float(sum(r.num_completion_tokens for t in turns for r in t.rollouts)))
        metrics: dict[str, Any] = {
            "step": self.step,
            "reward_mean": float(first.mean()),
            "reward_std": float(first.std()) if first.numel() > 1 else 0.0,
            "reward_min": float(first.min()),
            "reward_max": float(first.max()),
        }
        for t in turns[1:]:
            metrics[f"turn_{t.index + 1}/reward_mean"] = float(t.rewards.mean())
        # the scorer's own figures (reward levels, tests passed, cooperation schemes) over the first turn
        metrics.update({f"figures/{k}": v for k, v in turn_mean_figures(turns[0]).items()})
        for agent, optimizer, m in zip(self.agents, self.optimizers, agent_metrics):
            for key in ("loss", "grad_norm", "advantage_mean", "advantage_std", "zero_advantage_groups",
                        "is_weight_mean", "is_capped_fraction"):
                if key in m:
                    metrics[f"{agent.name}/{key}"] = m[key]
            metrics[f"{agent.name}/learning_rate"] = optimizer.param_groups[0]["lr"]
        metrics.update(
            tokens_generated=tokens,
            rollout_seconds=rollout_s,
            update_seconds=update_s,
            seconds=rollout_s + update_s,
            tokens_per_second=tokens / rollout_s if rollout_s > 0 else 0.0,
            **_peak_memory_figures(),
        )
        return metrics

    def _step_samples(self, turns: list[Turn], returns: list[torch.Tensor]) -> list[dict[str, Any]]:
        samples = []
        for turn, ret in zip(turns, returns):
            for p in range(turn.num_nodes):
                for j in range(turn.num_joint):
                    samples.append(
                        {
                            "turn": turn.index + 1,
                            "node": p,
                            "prompts": [r.prompts[p] for r in turn.rollouts],
                            "completions": list(turn.joint_completions(p, j)),
                            "reward": float(turn.rewards[p, j]),
                            "return": float(ret[p, j]),
                        }
                    )
        return samples


# ---------------------------------------------------------------------- helpers
_HOST_PEAK = Path("/proc/self/status")  # Linux: VmHWM, the peak resident set, resettable per step


def _reset_peak_host_memory() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # "5": reset VmHWM to the current resident set
    except OSError:
        pass  # not Linux, or not allowed: the peak is then the process's so far


def _peak_memory_figures() -> dict[str, float]:
    """Peak memory in MiB: of this step on each GPU in use (``cuda_peak_mib``), and in host memory
    (``peak_rss_mib``: of this step on Linux, of the process so far elsewhere)."""
    import re
    import resource
    import sys

    try:
        rss_mib = int(re.search(r"VmHWM:\s+(\d+)", _HOST_PEAK.read_text()).group(1)) / 1024
    except (OSError, AttributeError):
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rss_mib = rss / (1024 * 1024 if sys.platform == "darwin" else 1024)  # bytes on macOS, KiB elsewhere
    figures = {"peak_rss_mib": rss_mib}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        figures["cuda_peak_mib"] = max(torch.cuda.max_memory_allocated(d) for d in range(torch.cuda.device_count())) / 2**20
    return figures


def _advantage_figures(advantages: Sequence[torch.Tensor], group_size: int) -> dict[str, float]:
    """Mean and std of an agent's advantages over the step, and the share of its groups (G
    completions of one node) without any signal (every advantage 0: nothing to learn from)."""
    flat = torch.cat([adv.flatten() for adv in advantages]).double()
    groups = torch.cat([adv.reshape(-1, group_size) for adv in advantages])
    return {
        "advantage_mean": float(flat.mean()),
        "advantage_std": float(flat.std()) if flat.numel() > 1 else 0.0,
        "zero_advantage_groups": float((groups == 0).all(dim=1).double().mean()),
    }


class _Stopped(Exception):
    """A clean stop on a signal, carrying the exception the caller should see."""

    def __init__(self, exit_: BaseException) -> None:
        super().__init__(str(exit_))
        self.exit = exit_


def _pad_right(mask: torch.Tensor, length: int) -> torch.Tensor:
    if mask.shape[1] == length:
        return mask
    return torch.nn.functional.pad(mask, (0, length - mask.shape[1]), value=False)


def _trim_right(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop completion columns that no row of the chunk uses."""
    used = int(mask.any(dim=0).nonzero().max()) + 1 if mask.any() else 1
    return ids[:, :used], mask[:, :used]


def _trim_left(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop left-padding columns that every row of the chunk has."""
    first = int(mask.any(dim=0).nonzero().min()) if mask.any() else 0
    return ids[:, first:], mask[:, first:]


__all__ = ["DatasetError", "MAGRPOTrainer"]
