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
            weights = _file_tensors(path)
        self.reload_weights(weights_iterator=iter(weights or ()))  # read once, a tensor at a time
        if current_platform.is_cpu():
            from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

            head = getattr(self.model_runner.get_model(), "lm_head", None)
            if head is not None and getattr(head, "weight", None) is not None and head.weight.numel():
                dispatch_cpu_unquantized_gemm(head, remove_weight=False)


def _file_tensors(path: str) -> Iterable[tuple[str, torch.Tensor]]:
    """The tensors of a safetensors file, one at a time (never the whole model in memory twice)."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as tensors:
        for name in tensors.keys():
            yield name, tensors.get_tensor(name)


#: the qualified name vLLM imports in each worker
EXTENSION = f"{__name__}.{PolicySyncExtension.__qualname__}"
