"""What magrpo adds to each vLLM worker (vLLM's ``worker_extension_cls``), so that the same calls
keep an engine on the current policy whether it lives in the training process or in a process of
its own: methods reached by name through ``collective_rpc``, nothing pickled."""

from __future__ import annotations

from typing import Iterable

import torch


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
            from safetensors.torch import load_file

            weights = load_file(path).items()
        self.reload_weights(weights_iterator=list(weights or ()))
        if current_platform.is_cpu():
            from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

            head = getattr(self.model_runner.get_model(), "lm_head", None)
            if head is not None and getattr(head, "weight", None) is not None and head.weight.numel():
                dispatch_cpu_unquantized_gemm(head, remove_weight=False)


#: the qualified name vLLM imports in each worker
EXTENSION = f"{__name__}.{PolicySyncExtension.__qualname__}"
