"""What magrpo adds to each vLLM worker (vLLM's ``worker_extension_cls``), so that the same calls
keep an engine on the current policy whether it lives in the training process or in a process of
its own: methods reached by name through ``collective_rpc``, nothing pickled."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
import time
from typing import Iterable

import torch

from magrpo.sandbox.runner import has_ended

#: seconds an engine process is given to shut down cleanly after the trainer died
SHUTDOWN_GRACE_S = 10.0


class PolicySyncExtension:
    """Mixed into vLLM's worker class: ``self`` is the worker."""

    def magrpo_reload_weights(
        self, weights: Iterable[tuple[str, torch.Tensor]] | None = None, path: str | None = None
    ) -> None:
        """The live weights in place (given as tensors in the same process, or as a safetensors
        file from another: vLLM's messages carry no nested tensors), then, on CPU, the output
        head's packed GEMM rebuilt from them: vLLM's CPU linear layers run from a packed copy of
        their weights, and a tied output head is not reloaded by name, so without this it keeps
        answering with the old weights."""
        from vllm.platforms import current_platform

        if path is not None:
            weights = _file_tensors(path)
        self.reload_weights(weights_iterator=iter(weights or ()))  # read once, a tensor at a time
        if current_platform.is_cpu():
            from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

            head = getattr(self.model_runner.get_model(), "lm_head", None)
            if head is not None and getattr(head, "weight", None) is not None and head.weight.numel():
                dispatch_cpu_unquantized_gemm(head, remove_weight=False)

    def magrpo_die_with(self, trainer_pid: int) -> bool:
        """End this engine's processes when the trainer (process ``trainer_pid``) ends, however it
        ends: a trainer killed with SIGKILL cannot stop them, and vLLM's engine core, waiting on
        its dead client, would live on (re-parented to init) with the model in memory. A thread
        waits on the trainer's pidfd, then asks the engine core (this worker's parent, or this
        process where the worker lives in the core) to shut down, and kills what is left after
        ``SHUTDOWN_GRACE_S``. Returns whether a watch started (not in the trainer's own process)."""
        if trainer_pid == os.getpid():
            return False
        core = os.getppid() if os.getppid() != trainer_pid else os.getpid()
        try:
            trainer = os.pidfd_open(trainer_pid)
        except ProcessLookupError:  # already gone
            trainer = None
        threading.Thread(target=_end_after, args=(trainer, core), name="magrpo-trainer-watch", daemon=True).start()
        return True


def _end_after(trainer: int | None, core: int) -> None:
    if trainer is not None:
        select.select([trainer], [], [])  # readable once the trainer has exited
    os.kill(core, signal.SIGTERM)  # vLLM's handler shuts its executor and workers down
    deadline = time.monotonic() + SHUTDOWN_GRACE_S
    while not has_ended(core) and time.monotonic() < deadline:
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.kill(core, signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def _file_tensors(path: str) -> Iterable[tuple[str, torch.Tensor]]:
    """The tensors of a safetensors file, one at a time (never the whole model in memory twice)."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as tensors:
        for name in tensors.keys():
            yield name, tensors.get_tensor(name)


#: the qualified name vLLM imports in each worker
EXTENSION = f"{__name__}.{PolicySyncExtension.__qualname__}"
