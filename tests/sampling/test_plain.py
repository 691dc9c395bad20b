"""The plain sampler (transformers' generate) samples the policy the loss scores."""

from __future__ import annotations

import torch



def test_plain_greedy_sampler_repeats_its_single_decode_for_every_generation(tiny_agents):
    from magrpo.sampling.plain import sample_plain

    rollout = sample_plain(tiny_agents[0], ["q a", "b"], num_generations=3, max_new_tokens=4, temperature=0.0)
    assert rollout.completion_ids.shape[0] == 6
    for p in range(2):
        rows = rollout.completion_ids[p * 3 : (p + 1) * 3]
        assert torch.equal(rows[0], rows[1]) and torch.equal(rows[0], rows[2])
