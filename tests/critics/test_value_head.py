"""The value head reads the observation's last hidden state; its gradient reaches what it
should, and a critic trained on a task built for it explains the returns."""

from __future__ import annotations

import torch

from magrpo.critics import ValueHead, critic_advantages, explained_variance, observation_values, value_loss
from magrpo.logprobs import selected_token_logprobs
from tests.conftest import make_tiny_model


def left_padded(tokenizer, texts):
    rows = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    width = max(len(r) for r in rows)
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def test_a_fresh_head_values_everything_at_zero_and_padding_does_not_change_a_value(tiny_tokenizer):
    model = make_tiny_model(len(tiny_tokenizer), seed=1)
    head = ValueHead(model.config.hidden_size)
    ids, mask = left_padded(tiny_tokenizer, ["a b c q", "q"])
    assert observation_values(model, head, ids, mask).tolist() == [0.0, 0.0]
    torch.nn.init.normal_(head.score.weight)
    alone = observation_values(model, head, *left_padded(tiny_tokenizer, ["q"]))
    together = observation_values(model, head, ids, mask)
    torch.testing.assert_close(together[1:], alone, rtol=0, atol=1e-5)


def test_the_actor_loss_never_reaches_the_head_and_the_value_loss_reaches_only_what_it_is_given(tiny_tokenizer):
    model = make_tiny_model(len(tiny_tokenizer), seed=2)
    head = ValueHead(model.config.hidden_size)
    torch.nn.init.normal_(head.score.weight)
    ids, mask = left_padded(tiny_tokenizer, ["a b", "q c"])
    values = observation_values(model, head, ids, mask)
    advantages = critic_advantages(torch.tensor([[1.0], [0.0]]), values)
    # an actor loss: -A * log pi of the observations' next tokens
    logits = model(input_ids=ids, attention_mask=mask).logits[:, -1:]
    logprobs = selected_token_logprobs(logits, torch.tensor([[3], [4]]), None, 1.0)[:, 0]
    (-(advantages.to(logprobs.dtype) * logprobs).sum()).backward()
    assert head.score.weight.grad is None and head.score.bias.grad is None
    assert model.lm_head.weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    for shared in (True, False):  # the value loss: the head, and the body only when shared
        model.zero_grad(set_to_none=True)
        head.zero_grad(set_to_none=True)
        value_loss(
            observation_values(model, head, ids, mask, train_backbone=shared), torch.tensor([1.0, 0.0])
        ).backward()
        assert head.score.weight.grad.abs().sum() > 0
        body = model.model.layers[0].self_attn.q_proj.weight.grad
        assert (body is not None and body.abs().sum() > 0) == shared
        assert model.lm_head.weight.grad is None  # no vocabulary projection in a value


def test_a_critic_learns_which_observations_pay_its_explained_variance_rises(tiny_tokenizer):
    # the return is 1 where the observation holds "a", else 0: a task a critic can learn
    texts = ["a b", "q b", "c a q", "b c", "a", "q q c"]
    returns = torch.tensor([1.0 if "a" in t.split() else 0.0 for t in texts])
    model = make_tiny_model(len(tiny_tokenizer), seed=3)
    head = ValueHead(model.config.hidden_size)
    ids, mask = left_padded(tiny_tokenizer, texts)
    optimiser = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=3e-3)
    history = []
    for _ in range(60):
        values = observation_values(model, head, ids, mask)
        history.append(explained_variance(values, returns))
        loss = value_loss(values, returns)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    print(f"explained variance: first {history[0]:.3f}, step 20 {history[20]:.3f}, last {history[-1]:.3f}")
    assert history[0] <= 0.0 and history[-1] > 0.95


def test_the_head_values_in_float32_under_bf16_autocast():
    head = ValueHead(8)
    torch.nn.init.normal_(head.score.weight)
    hidden = torch.randn(3, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = head(hidden)
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, head(hidden), rtol=0, atol=0)
