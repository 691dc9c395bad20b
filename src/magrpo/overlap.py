"""One-step-off rollouts (``async_rollouts=1``): the vLLM engines sample step t+1's tree while
step t updates, so neither waits for the other.

    step t:   push weights v_t to the engines -> sample step t+1's items in the background ->
              update on step t's tree (sampled with v_{t-1}) -> v_{t+1}

Each update then learns from samples one policy version old (the first step's excepted: it has
nothing to overlap with). The update already weights every token by min(pi_old / pi_sampler,
rollout_is_cap) with the engine's sampled-token log-probs (pi_sampler: the older weights), the
truncated importance-sampling correction TRL and the asynchronous trainers use; the staleness is
in every metrics row (``rollout_staleness``), the weights in ``agent_i/is_weight_mean``.

The engines take new weights only here, in the training thread, before a background rollout
starts (never while the update moves them); they do not sleep, since they sample during the
update. A checkpoint waits for the rollout in flight and keeps it (``pending_rollout.pt``), so a
resumed run learns from the very tree the straight run would have: resume stays exact.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch

from magrpo.grouping import distinct_by_identity
from magrpo.step import SampledTree, sample_tree

if TYPE_CHECKING:
    from magrpo.trainer import MAGRPOTrainer

#: the file of a checkpoint that holds the rollout sampled ahead
PENDING_FILE = "pending_rollout.pt"


class RolloutsAhead:
    """The rollout sampled during the previous update, and the thread that samples the next."""

    def __init__(self, trainer: "MAGRPOTrainer") -> None:
        self.trainer = trainer
        self.engines = distinct_by_identity([a.rollout_engine for a in trainer.team.agents if a.rollout_engine])
        for engine in self.engines:
            engine.sync_before_generate = False  # pushes happen in start(), never mid-update
            engine.sleep_mode = False  # they sample while the update runs
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="magrpo-rollout")
        self.pending: Future[SampledTree] | None = None
        self.position: dict[str, Any] | None = None  # the data position before the pending batch
        #: the places in train_dataset of each sampled tree's items, by the step it is for (its samples name them)
        self.indices: dict[int, list[int]] = {}

    def next(self) -> SampledTree:
        """This step's tree: the one sampled during the last update, or, where there is none (the
        first step, a resume at the end of an epoch of pending trees), one sampled now."""
        if self.pending is not None:
            pending, self.pending = self.pending, None
            return pending.result()
        trainer = self.trainer
        self._push()
        envs = self._envs(trainer.state.step)
        return sample_tree(trainer.team, envs, trainer.state.step)

    def start(self, step: int) -> None:
        """Push the current weights, then sample the next batch for ``step`` in the background."""
        trainer = self.trainer
        self.position = trainer.state.item_order.state()
        self._push()
        envs = self._envs(step)
        self.pending = self.pool.submit(sample_tree, trainer.team, envs, step, trainer.state.step)

    def _envs(self, step: int) -> list[Any]:
        """The environments of the next batch, for ``step``; their items' places are kept."""
        trainer = self.trainer
        self.indices[step] = trainer.next_batch_indices()
        return [trainer.env_factory(trainer.train_items[i]) for i in self.indices[step]]

    def _push(self) -> None:
        for engine in self.engines:
            engine.ensure_current()

    def settled(self) -> SampledTree | None:
        """The rollout in flight, waited for (kept pending), or None."""
        if self.pending is None:
            return None
        return self.pending.result()

    def forget(self) -> None:
        """Drop the rollout in flight (its batch comes again: the data position goes back)."""
        if self.pending is not None:
            self.pending.cancel()
            self.pending = None
            if self.position is not None:
                self.trainer.state.item_order.load_state(self.position)

    def save(self, directory: Path) -> None:
        """The rollout in flight into a checkpoint folder (nothing where there is none)."""
        sampled = self.settled()
        if sampled is not None:
            torch.save(
                {
                    "turns": sampled.turns,
                    "seconds": sampled.seconds,
                    "step": sampled.step,
                    "version": sampled.version,
                    "indices": self.indices.get(sampled.step),
                },
                directory / PENDING_FILE,
            )

    def restore(self, directory: Path) -> None:
        """The rollout a checkpoint kept becomes the pending one."""
        path = directory / PENDING_FILE
        if path.is_file():
            kept: Mapping[str, Any] = torch.load(path, weights_only=False)  # the run's own file, checksummed
            future: Future[SampledTree] = Future()
            future.set_result(SampledTree(kept["turns"], kept["seconds"], kept["step"], kept["version"]))
            if kept.get("indices") is not None:  # (not kept by older checkpoints)
                self.indices[kept["step"]] = list(kept["indices"])
            self.pending = future

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


__all__ = ["PENDING_FILE", "RolloutsAhead"]
