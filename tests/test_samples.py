"""Samples a person can read: samples.jsonl holds, per joint action, the item, each agent's chat
messages, the completions, the joint reward and its levels, the return and each agent's advantage,
exactly as the trainer computed them; the held-out answers before and after training too."""

from __future__ import annotations

import json

from magrpo import MAGRPOConfig, MAGRPOTrainer

ITEMS = [{"id": f"item-{k}", "q": q} for k, q in enumerate(["a b", "q c", "b b a", "c"])]


def helper_prompt(item):
    return [{"role": "system", "content": "You help."}, {"role": "user", "content": item["q"]}]


def main_prompt(item):
    return f"answer {item['q']}"


def scorer(*, completions, **_):
    """Two levels and the reward they sum to."""
    rows = []
    for c0, c1 in completions:
        a, b = float(c0.count("a")), float(c1.count("b"))
        rows.append({"reward": a - b, "level_a": a, "level_b": b})
    return rows


def tiny_trainer(agents, tmp_path, **config):
    settings = dict(num_generations=2, max_new_tokens=3, max_steps=2, batch_size=2, learning_rate=1e-2)
    args = MAGRPOConfig(**{**settings, **config}, output_dir=str(tmp_path), save_strategy="no")
    return MAGRPOTrainer(
        agents=agents,
        scorer=scorer,
        train_dataset=ITEMS,
        eval_dataset=ITEMS[:3],
        formatters=[helper_prompt, main_prompt],
        args=args,
    )


def test_samples_jsonl_holds_what_the_step_computed(cpu_agents, tmp_path):
    trainer = tiny_trainer(cpu_agents, tmp_path)
    trainer.train(progress=False)
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1] * 4 + [2] * 4  # 2 items x G=2 joint actions per step
    last, G = trainer.last_step, 2
    turn = last.turns[0]
    for row in rows[4:]:
        p, j = row["node"], row["joint"]
        assert row["turn"] == 1
        item = ITEMS[row["item"]]
        assert row["item_id"] == item["id"]
        assert row["prompts"] == [helper_prompt(item), [{"role": "user", "content": main_prompt(item)}]]
        completions = [turn.rollouts[i].completion(p, j) for i in range(2)]
        assert row["completions"] == completions
        [expected] = scorer(completions=[tuple(completions)])
        assert row["reward"] == expected["reward"] == float(turn.rewards[p, j])
        assert row["figures"] == {"level_a": expected["level_a"], "level_b": expected["level_b"]}
        assert row["return"] == float(last.returns[0][p, j])
        assert row["advantages"] == [float(last.advantages[i][0][p * G + j]) for i in range(2)]
    # each step's two items are two of the data set's (the seeded order), each answered G times
    for step in (1, 2):
        items = [r["item"] for r in rows if r["step"] == step]
        assert items[0] == items[1] and items[2] == items[3] and items[0] != items[2]


def test_the_advantages_of_a_step_are_centred_per_node_and_agent(cpu_agents, tmp_path):
    """MAGRPO's advantage of a joint action is its return minus the mean return of its node's G."""
    trainer = tiny_trainer(cpu_agents, tmp_path, max_steps=1)
    trainer.train(progress=False)
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    for node in (0, 1):
        group = [r for r in rows if r["node"] == node]
        mean = sum(r["return"] for r in group) / len(group)
        for r in group:
            assert r["advantages"] == [r["return"] - mean] * 2


def test_evaluate_keeps_the_held_out_answers_behind_its_figures(cpu_agents, tmp_path):
    trainer = tiny_trainer(cpu_agents, tmp_path)
    figures = trainer.evaluate()
    rows = trainer.eval_samples
    assert [(r["item"], r["item_id"], r["turn"]) for r in rows] == [(k, f"item-{k}", 1) for k in range(3)]
    assert all("node" not in r and "joint" not in r for r in rows)  # (places in a batch name nothing)
    for row in rows:
        item = ITEMS[row["item"]]
        assert row["prompts"] == [helper_prompt(item), [{"role": "user", "content": main_prompt(item)}]]
        [expected] = scorer(completions=[tuple(row["completions"])])
        assert row["reward"] == expected["reward"]
        assert row["figures"] == {"level_a": expected["level_a"], "level_b": expected["level_b"]}
        assert "advantages" not in row and "return" not in row
    assert figures["reward"] == sum(r["reward"] for r in rows) / 3
    assert figures["level_a"] == sum(r["figures"]["level_a"] for r in rows) / 3
    # greedy answers: the same items answered again give the same rows
    trainer.evaluate(max_items=2)
    assert trainer.eval_samples == rows[:2]


def test_log_completions_prints_each_logged_steps_samples_as_a_table(cpu_agents, tmp_path, capsys):
    from rich.console import Console

    from magrpo.samples import completions_table

    trainer = tiny_trainer(cpu_agents, tmp_path, log_completions=True, num_completions_to_print=3)
    trainer.train(progress=False)
    out = capsys.readouterr().out
    assert "step 1: 3 of 4 joint actions" in out and "step 2: 3 of 4 joint actions" in out
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()][4:]
    table = completions_table(rows, 2, limit=3)
    cells = {column.header: list(column._cells) for column in table.columns}
    assert cells["item"] == [f"{r['item']} ({r['item_id']})" for r in rows[:3]]
    assert cells["agent_0"] == [r["completions"][0] for r in rows[:3]]
    assert cells["agent_1"] == [r["completions"][1] for r in rows[:3]]
    assert cells["joint reward"] == [f"{r['reward']:+.3f}" for r in rows[:3]]
    assert cells["advantages"] == [" / ".join(f"{a:+.3f}" for a in r["advantages"]) for r in rows[:3]]
    wide = Console(width=300, record=True)
    wide.print(table)
    assert "step 2: 3 of 4 joint actions" in wide.export_text()


def test_log_completions_is_off_by_default(cpu_agents, tmp_path, capsys):
    assert MAGRPOConfig().log_completions is False
    tiny_trainer(cpu_agents, tmp_path, max_steps=1).train(progress=False)
    assert "step 1: 4 of 4 joint actions" not in capsys.readouterr().out


def test_tensorboard_gets_each_logged_steps_samples_as_text(cpu_agents, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from magrpo.samples import samples_markdown

    trainer = tiny_trainer(cpu_agents, tmp_path, report_to="tensorboard")
    trainer.train(progress=False)
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    texts = {e.step: e.tensor_proto.string_val[0].decode() for e in events.Tensors("samples/text_summary")}
    assert texts == {step: samples_markdown([r for r in rows if r["step"] == step]) for step in (1, 2)}
    first = rows[0]
    assert f"agent_1:\n\n    {first['completions'][1]}" in texts[1]
    assert f"joint reward {first['reward']:+.3f}, advantages" in texts[1]


def test_a_later_turns_rows_name_the_item_their_branch_started_from(cpu_agents, tmp_path):
    from magrpo.feedback import CallableFeedback

    args = MAGRPOConfig(
        num_generations=2, max_new_tokens=3, batch_size=2, num_turns=2, output_dir=str(tmp_path), save_strategy="no"
    )
    trainer = MAGRPOTrainer(
        agents=cpu_agents,
        scorer=scorer,
        train_dataset=ITEMS,
        formatters=[helper_prompt, main_prompt],
        feedback=CallableFeedback(lambda request: ("more a", "more b")),
        args=args,
    )
    _, samples = trainer.train_step(ITEMS[1:3], indices=[1, 2])
    second = trainer.last_step.turns[1]
    later = [r for r in samples if r["turn"] == 2]
    assert len(later) == second.num_nodes * second.num_joint > 0
    first = {(r["node"], r["joint"]): r for r in samples if r["turn"] == 1}
    for row in later:
        parent = first[second.parents[row["node"]]]
        assert (row["item"], row["item_id"]) == (parent["item"], parent["item_id"])
        helper_saw = " ".join(m["content"] for m in row["prompts"][0])
        assert "more a" in helper_saw and parent["completions"][0] in helper_saw
        assert row["return"] == float(trainer.last_step.returns[1][row["node"], row["joint"]])


def test_a_sequential_teams_rows_show_each_agent_the_earlier_answer_it_was_given(tiny_agents, tmp_path):
    """protocol="sequential", cross (G = 2, M = 2): each row is one joint action; the second agent's
    prompt is its question with the first agent's completion of that row appended, and the row's
    advantages are the counterfactual ones the update received."""
    from tests.test_trainer import paired_reward

    G, M = 2, 2
    args = MAGRPOConfig(
        num_generations=G,
        batch_size=1,
        max_new_tokens=4,
        max_steps=1,
        protocol="sequential",
        joint_mode="cross",
        num_continuations=M,
        credit="counterfactual",
        output_dir=str(tmp_path),
        save_strategy="no",
    )
    trainer = MAGRPOTrainer(
        agents=tiny_agents,
        reward_func=lambda completions, **_: [paired_reward(*c) for c in completions],
        train_dataset=[{"q": "q a"}],
        formatters=[lambda x: x["q"], lambda x: x["q"] + " c"],
        args=args,
        show_earlier_answers=lambda answers, item: answers[0],
    )
    trainer.train(progress=False)
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    (turn,) = trainer.last_step.turns
    assert len(rows) == G * M == turn.num_joint
    for row in rows:
        first, second = row["completions"]
        assert row["prompts"][0] == [{"role": "user", "content": "q a"}]
        assert row["prompts"][1] == [{"role": "user", "content": f"q a c\n\n{first}"}]
        assert row["reward"] == paired_reward(first, second)
        rows_of = turn.joint_rows(0, row["joint"])
        assert row["advantages"] == [float(trainer.last_step.advantages[i][0][r]) for i, r in enumerate(rows_of)]
    # each earlier answer is continued M times: the first agent's G answers each appear in M rows
    firsts = [row["completions"][0] for row in rows]
    assert all(firsts.count(f) % M == 0 for f in firsts)
