"""Prompts to ids: left padding asked of the call, never set on a tokenizer that agents share."""

from __future__ import annotations

import threading

from magrpo.models import build_agents
from magrpo.sampling.rollout import decode_completions, tokenize_prompts
from tests.conftest import make_tiny_model


def spy_on_padding_side(tokenizer) -> list[str]:
    """Record every assignment of ``tokenizer.padding_side``."""
    writes: list[str] = []
    base = type(tokenizer)

    def __setattr__(self, name, value):
        if name == "padding_side":
            writes.append(value)
        base.__setattr__(self, name, value)

    tokenizer.__class__ = type("SpiedTokenizer", (base,), {"__setattr__": __setattr__})
    return writes


def test_prompts_are_left_padded_without_touching_the_shared_tokenizer(tiny_tokenizer):
    tiny_tokenizer.padding_side = "right"
    agents = build_agents(
        [(make_tiny_model(len(tiny_tokenizer), seed=s), tiny_tokenizer) for s in (1, 2)], device="cpu"
    )
    writes = spy_on_padding_side(tiny_tokenizer)
    texts, ids, mask = tokenize_prompts(agents[0], ["a b c", "q"])
    assert texts == ["a b c", "q"]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]] and ids[1, -1].item() == tiny_tokenizer.convert_tokens_to_ids("q")

    threads = [threading.Thread(target=tokenize_prompts, args=(agents[i % 2], ["a b", "q q q a"])) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert writes == [] and tiny_tokenizer.padding_side == "right"


def test_decoded_text_stops_at_the_first_eos(tiny_tokenizer, tiny_agents):
    import torch

    ids = torch.tensor([[2, 3, 0, 4, 4]])  # a b <eos> c c
    mask = torch.tensor([[True, True, True, False, False]])
    assert decode_completions(tiny_agents[0], ids, mask) == ["a b"]
