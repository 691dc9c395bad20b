"""A critic on a language model: V(observation) from the model's last hidden state.

The head is a linear map of the hidden state at the observation's last token (its prompt, as
the agent reads it), zero-initialised so that V = 0 and A = R before the critic has learnt
anything. On the agent's own model (``train_backbone=True``, and with LoRA the adapter) the value
loss trains the head and the shared body, by design: the actor's loss never reaches the head
(the advantages take the values as constants). With ``train_backbone=False`` the value loss
trains the head alone, over a frozen view of the body. A separate critic model is the same head
on a model of its own, with its own optimiser.
"""

from __future__ import annotations

import torch
from torch import nn

from magrpo.logprobs import position_ids_from_mask


class ValueHead(nn.Module):
    """hidden state [..., H] -> value [...]."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.score = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.score.weight)
        nn.init.zeros_(self.score.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # in the head's own precision even under autocast: a bf16 value would round R - V
        with torch.autocast(hidden.device.type, enabled=False):
            return self.score(hidden.to(self.score.weight.dtype)).squeeze(-1)


def observation_values(
    model: nn.Module,
    head: ValueHead,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    train_backbone: bool = True,
) -> torch.Tensor:
    """V of each left-padded observation ``[B, L]`` (its last position is its last token): ``[B]``.
    Only the hidden states are computed, no vocabulary projection."""
    out = model(
        input_ids=prompt_ids,
        attention_mask=prompt_mask.long(),
        position_ids=position_ids_from_mask(prompt_mask.long()),
        use_cache=False,
        output_hidden_states=True,
        logits_to_keep=1,
    )
    last = out.hidden_states[-1][:, -1]
    return head(last if train_backbone else last.detach())


__all__ = ["ValueHead", "observation_values"]
