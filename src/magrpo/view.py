"""``magrpo view``: one self-contained HTML page of one run or several side by side, to see what the
team writes and how the training went. It needs no server and loads nothing: the curves are
inline SVG drawn by matplotlib, the styles sit in the page, and there is no script.

The page holds, per run folder: the curves of metrics.jsonl (the joint reward with its min-max
band and the held-out points before and after training, then every other figure: each agent's
loss, entropy, KL, clip fraction, learning rate, ..., tokens/s), the runs overlaid when there are
several; the logged steps of samples.jsonl, each item with its joint actions side by side (one
column per agent, the prompt each agent saw folded away), the joint reward, the scorer's figures
(the reward levels) and each agent's advantage; and the held-out answers before and after
training (eval_before_samples.jsonl, eval_after_samples.jsonl).
"""

from __future__ import annotations

import html
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from magrpo.report import read_jsonl_rows
from magrpo.run_folder import RunFolder
from magrpo.samples import item_label

#: figures drawn first, in this order (by their name after the agent's or critic's: "agent_0/loss")
FIRST_PANELS = (
    "loss",
    "entropy",
    "kl",
    "clip_fraction",
    "learning_rate",
    "grad_norm",
    "advantage_std",
    "completions/mean_length",
    "tokens_per_second",
)
#: figures the reward panel shows
REWARD_KEYS = ("reward_mean", "reward_std", "reward_min", "reward_max")
LINE_STYLES = ("-", "--", ":", "-.")
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


@dataclass
class RunRecord:
    """What a run folder holds for the page."""

    path: Path
    config: dict[str, Any]
    metrics: list[dict[str, Any]]
    samples: list[dict[str, Any]]
    held_out: dict[str, dict[str, Any]] = field(default_factory=dict)
    held_out_samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def agent_names(self) -> list[str]:
        rows = self.samples or self.held_out_samples.get("before") or self.held_out_samples.get("after") or []
        count = len(rows[0]["completions"]) if rows else int(self.config.get("config", {}).get("num_agents", 2))
        return [f"agent_{i}" for i in range(count)]


def read_run(path: str | Path) -> RunRecord:
    """The files of run folder ``path`` the page shows (a :class:`ValueError` where it is none)."""
    import yaml

    folder = RunFolder.of(path)
    if not folder.metrics.is_file() and not folder.samples.is_file():
        raise ValueError(f"{str(path)!r} is not a run folder: it has neither metrics.jsonl nor samples.jsonl")
    config = yaml.safe_load(folder.config.read_text()) if folder.config.is_file() else {}
    record = RunRecord(folder.path, config or {}, read_jsonl_rows(folder.metrics), read_jsonl_rows(folder.samples))
    for when in ("before", "after"):
        if folder.held_out(when).is_file():
            record.held_out[when] = json.loads(folder.held_out(when).read_text())
        if folder.held_out_samples(when).is_file():
            record.held_out_samples[when] = read_jsonl_rows(folder.held_out_samples(when))
    return record


def write_view(runs: Sequence[str | Path], output: str | Path | None = None, last_steps: int | None = None) -> Path:
    """The page of ``runs`` written to ``output`` (default: RUN/view.html for one run, view.html
    here for several), with the samples of each run's last ``last_steps`` logged steps (None:
    all; a long run's samples make a large page); returns its path."""
    records = [read_run(run) for run in runs]
    if not records:
        raise ValueError("name at least one run folder")
    path = Path(output) if output is not None else (records[0].path / "view.html" if len(records) == 1 else None)
    path = path or Path("view.html")
    path.write_text(render_page(records, last_steps))
    return path


# ---------------------------------------------------------------------- the page
def render_page(runs: Sequence[RunRecord], last_steps: int | None = None) -> str:
    """The whole page of ``runs``, as HTML text (the samples of the last ``last_steps`` logged
    steps of each; None: all)."""
    title = " vs ".join(run.name for run in runs)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>magrpo: {_e(title)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>magrpo: {_e(title)}</h1>",
        runs_table(runs),
        '<h2 id="curves">Training curves</h2>',
        curves(runs),
    ]
    for k, run in enumerate(runs):
        parts.append(f'<h2 id="run-{k}">{_e(run.name)}: what the team wrote</h2>')
        parts.append(steps_section(run, k, last_steps))
        parts.append(held_out_section(run, k))
    parts.append("</body></html>")
    return "\n".join(parts)


def runs_table(runs: Sequence[RunRecord]) -> str:
    """One line per run: its folder, task, models, steps and rewards."""
    head = "<tr><th>run</th><th>task</th><th>models</th><th>G</th><th>steps</th>"
    head += "<th>last mean joint reward</th><th>held-out reward before</th><th>after</th></tr>"
    lines = [f'<table class="runs">{head}']
    for k, run in enumerate(runs):
        config = run.config.get("config", {})
        last = run.metrics[-1] if run.metrics else {}
        cells = [
            f'<span class="swatch" style="background:{COLORS[k % len(COLORS)]}"></span>{_e(run.name)}'
            f'<div class="path">{_e(str(run.path))}</div>',
            _e(str(run.config.get("task", "-"))),
            _e(", ".join(map(str, run.config.get("models") or [])) or "-"),
            _e(str(config.get("num_generations", "-"))),
            _e(str(last.get("step", 0))),
            _number(last.get("reward_mean")),
            _number(run.held_out.get("before", {}).get("reward")),
            _number(run.held_out.get("after", {}).get("reward")),
        ]
        lines.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def curves(runs: Sequence[RunRecord]) -> str:
    """The joint reward panel, then one panel per other figure of metrics.jsonl, runs overlaid."""
    from magrpo.plots import draw_reward, integer_steps, pyplot

    plt = pyplot()
    with_metrics = [(k, run) for k, run in enumerate(runs) if run.metrics]
    if not with_metrics:
        return "<p>No step was logged (metrics.jsonl is empty).</p>"
    several = len(runs) > 1
    figures = []
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    for k, run in with_metrics:
        label = f"{run.name}: " if several else ""
        draw_reward(ax, run.metrics, run.held_out, color=COLORS[k % len(COLORS)], label=label)
    ax.set_title("joint reward per step (min-max band; held-out before and after)", fontsize=10)
    ax.legend(loc="best", fontsize=7)
    figures.append(_svg(plt, fig, "joint reward"))
    for panel, series in metric_panels([run for _, run in with_metrics]).items():
        fig, ax = plt.subplots(figsize=(3.9, 2.5))
        for k, run in with_metrics:
            steps = [row["step"] for row in run.metrics]
            for s, (name, key) in enumerate(series):
                values = [_float(row.get(key)) for row in run.metrics]
                if all(v != v for v in values):  # the run has no such figure
                    continue
                # one run: a colour per line; several: a colour per run, a line style per series
                if several:
                    color, style = COLORS[k % len(COLORS)], LINE_STYLES[s % len(LINE_STYLES)]
                else:
                    color, style = COLORS[s % len(COLORS)], "-"
                label = f"{run.name}: {name}" if several else name
                ax.plot(steps, values, linestyle=style, marker=".", color=color, label=label)
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        integer_steps(ax)
        ax.grid(alpha=0.3)
        if len(ax.get_legend_handles_labels()[0]) > 1 or several:
            ax.legend(fontsize=6, loc="best")
        figures.append(_svg(plt, fig, panel))
    return '<div class="curves">' + "\n".join(figures) + "</div>"


def metric_panels(runs: Sequence[RunRecord]) -> dict[str, list[tuple[str, str]]]:
    """Panel title -> its lines as (name, metrics key): an agent's or a critic's figure
    ("agent_0/loss") shares a panel with the other agents' ("loss"), the scorer's figures
    ("figures/level_defined") share one, the later turns' rewards one; every other key has its own."""
    panels: dict[str, list[tuple[str, str]]] = {}
    for run in runs:
        for row in run.metrics:
            for key, value in row.items():
                if key == "step" or key in REWARD_KEYS or not _is_number(value):
                    continue
                owner, _, figure = key.partition("/")
                if not figure:
                    title, name = key, key
                elif owner == "figures":
                    title, name = "scorer figures (mean over the step)", figure
                elif re.fullmatch(r"turn_\d+", owner):
                    title, name = f"{figure} by turn", owner
                else:
                    title, name = figure, owner
                if (name, key) not in panels.setdefault(title, []):
                    panels[title].append((name, key))

    def order(title: str) -> int:
        return FIRST_PANELS.index(title) if title in FIRST_PANELS else len(FIRST_PANELS)

    return {title: panels[title] for title in sorted(panels, key=order)}  # (a stable sort: first seen next)


def steps_section(run: RunRecord, k: int, last_steps: int | None = None) -> str:
    """The logged steps of samples.jsonl (the last ``last_steps`` of them), each folded, its
    items' joint actions side by side."""
    if not run.samples:
        return "<p>No samples were logged (samples.jsonl is empty: log_samples_steps=0?).</p>"
    steps: dict[int, list[dict[str, Any]]] = {}
    for row in run.samples:
        steps.setdefault(int(row.get("step", 0)), []).append(row)
    shown = sorted(steps)[-last_steps:] if last_steps else sorted(steps)
    of = f"the last {len(shown)} of " if len(shown) < len(steps) else ""
    parts = [f"<h3>Training samples: {of}{len(steps)} logged steps</h3>"]
    for step in shown:
        rows = steps[step]
        rewards = [row["reward"] for row in rows if row.get("turn", 1) == 1]
        mean = sum(rewards) / len(rewards) if rewards else float("nan")
        groups = _groups(rows)
        items = sum(1 for group in groups if group[0].get("turn", 1) == 1)  # turn 1: a node per item
        nodes = f" ({len(groups)} nodes over the turns)" if len(groups) > items else ""
        summary = f"step {step}: mean joint reward {mean:+.3f}, {items} items{nodes}, {len(rows)} joint actions"
        parts.append(f'<details class="step" id="r{k}-s{step}"{" open" if step == shown[-1] else ""}>')
        parts.append(f"<summary>{_e(summary)}</summary>")
        for rows_of_item in groups:
            parts.append(item_table(run, rows_of_item, f"r{k}-s{step}"))
        parts.append("</details>")
    return "\n".join(parts)


def item_table(run: RunRecord, rows: Sequence[Mapping[str, Any]], prefix: str) -> str:
    """One node of the tree: its item, each agent's prompt (folded), and its joint actions side by side."""
    first = rows[0]
    turn, node = first.get("turn", 1), first.get("node", 0)
    cell_prefix = f"{prefix}-t{turn}-n{node}"
    learnt = "advantages" in first
    head = ["#"] + [f"{_e(name)}{prompt_details(p)}" for name, p in zip(run.agent_names, _prompts(first))]
    head += ["joint reward", "levels"] + (["return"] if "return" in first else [])
    lines = [f'<div class="item"><h4>{_e(item_title(first))}</h4><table class="joint">']
    lines.append("<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>")
    for place, row in enumerate(rows):
        j = row.get("joint", place)  # (rows of older runs have no joint index: their order is it)
        cells = [str(j)]
        for i, completion in enumerate(row["completions"]):
            advantage = ""
            if learnt:
                advantage = f'<div class="adv">advantage {_number(row["advantages"][i])}</div>'
            cells.append(f'<pre class="completion" id="{cell_prefix}-j{j}-a{i}">{_e(completion)}</pre>{advantage}')
        cells += [_number(row["reward"]), levels_list(row.get("figures") or {})]
        if "return" in row:
            cells.append(_number(row["return"]))
        lines.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    lines.append("</table></div>")
    return "\n".join(lines)


def held_out_section(run: RunRecord, k: int) -> str:
    """The held-out answers before and after training, item by item, side by side."""
    if not run.held_out_samples:
        return "<p>No held-out answers in this folder (eval_before_samples.jsonl, eval_after_samples.jsonl).</p>"
    keyed = {
        when: {(row.get("turn", 1), row.get("item")): row for row in rows}
        for when, rows in run.held_out_samples.items()
    }
    keys = list(dict.fromkeys(key for rows in keyed.values() for key in rows))
    whens = [when for when in ("before", "after") if when in keyed]
    parts = [f"<h3>Held-out answers ({', '.join(whens)} training)</h3>", '<table class="held-out">']
    head = (
        "<th>item</th>"
        + "".join(f"<th>{_e(name)} {when}</th>" for when in whens for name in run.agent_names)
        + "".join(f"<th>reward {when}</th>" for when in whens)
    )
    parts.append(f"<tr>{head}</tr>")
    for key in keys:
        rows = [keyed[when].get(key) for when in whens]
        present = next(row for row in rows if row is not None)
        item_cell = _e(item_title(present, with_node=False)) + "".join(
            prompt_details(p, name) for name, p in zip(run.agent_names, _prompts(present))
        )
        cells = [item_cell]
        for when, row in zip(whens, rows):
            for i in range(len(run.agent_names)):
                text = row["completions"][i] if row is not None else ""
                cells.append(f'<pre class="completion" id="r{k}-{when}-t{key[0]}-i{key[1]}-a{i}">{_e(text)}</pre>')
        for row in rows:
            cells.append(_number(row["reward"] if row else None) + levels_list(row.get("figures") or {} if row else {}))
        parts.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    parts.append("</table>")
    return "\n".join(parts)


def prompt_details(prompt: Any, name: str = "") -> str:
    """What an agent was shown, folded: its chat messages (or the rendered text of older runs)."""
    messages = prompt if isinstance(prompt, list) else [{"role": "prompt", "content": str(prompt)}]
    body = "".join(
        f'<div class="msg"><span class="role">{_e(str(m.get("role", "")))}</span>'
        f"<pre>{_e(str(m.get('content', '')))}</pre></div>"
        for m in messages
    )
    label = f"{name} prompt" if name else "prompt"
    return f'<details class="prompt"><summary>{_e(label)}</summary>{body}</details>'


def levels_list(figures: Mapping[str, Any]) -> str:
    """The scorer's figures of a joint action (each reward level, tests passed, ...), compact."""
    if not figures:
        return ""
    items = "".join(f"<li>{_e(k)} {v:g}</li>" if _is_number(v) else f"<li>{_e(k)} -</li>" for k, v in figures.items())
    return f'<ul class="levels">{items}</ul>'


def item_title(row: Mapping[str, Any], with_node: bool = True) -> str:
    """``item 17 (HumanEval/17), turn 1, node 0`` (the node: its place in the step's tree)."""
    node = f", node {row.get('node', 0)}" if with_node else ""
    return f"item {item_label(row)}, turn {row.get('turn', 1)}{node}"


# ---------------------------------------------------------------------- helpers
def _groups(rows: Iterable[Mapping[str, Any]]) -> list[list[Mapping[str, Any]]]:
    """Rows grouped by their node (turn, node), in order."""
    groups: dict[tuple[int, int], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row.get("turn", 1), row.get("node", 0)), []).append(row)
    return list(groups.values())


def _prompts(row: Mapping[str, Any]) -> list[Any]:
    return list(row.get("prompts") or [None] * len(row["completions"]))


def _svg(plt: Any, fig: Any, title: str) -> str:
    """A figure as inline SVG (text kept as text: searchable, and small)."""
    buffer = io.StringIO()
    with plt.rc_context({"svg.fonttype": "none"}):
        fig.tight_layout()
        # no metadata block: it names web addresses (namespaces only, but the page should name none)
        fig.savefig(buffer, format="svg", metadata={"Creator": None, "Date": None, "Format": None, "Type": None})
    plt.close(fig)
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg") :]  # without the XML declaration and doctype
    return f'<figure class="plot" title="{_e(title)}">{svg}</figure>'


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _float(value: Any) -> float:
    return float(value) if _is_number(value) else float("nan")


def _number(value: Any) -> str:
    return f"{value:+.3f}" if _is_number(value) else "-"


def _e(text: str) -> str:
    return html.escape(text, quote=True)


STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
h3 { font-size: 1.05em; } h4 { font-size: 0.95em; margin: 0.8em 0 0.3em; }
table { border-collapse: collapse; margin: 0.4em 0; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.5em; vertical-align: top; text-align: left; font-size: 0.9em; }
th { background: #f4f4f4; }
.runs .path { color: #777; font-size: 0.8em; }
.swatch { display: inline-block; width: 0.8em; height: 0.8em; margin-right: 0.4em; }
.curves { display: flex; flex-wrap: wrap; gap: 0.5em; }
figure.plot { margin: 0; } figure.plot svg { max-width: 100%; height: auto; }
pre { white-space: pre-wrap; word-break: break-word; margin: 0; font-size: 0.85em; }
pre.completion { background: #f8f8f0; padding: 0.3em; min-width: 12em; max-width: 42em; }
pre.completion:empty::before { content: "(empty)"; color: #999; }
.adv { color: #555; font-size: 0.8em; margin-top: 0.2em; }
ul.levels { margin: 0; padding-left: 1em; font-size: 0.8em; color: #444; white-space: nowrap; }
details.step { margin: 0.4em 0; } details.step > summary { cursor: pointer; font-weight: 600; }
details.prompt > summary { cursor: pointer; font-weight: normal; color: #555; font-size: 0.85em; }
.msg { margin: 0.3em 0; } .msg .role { font-weight: 600; font-size: 0.8em; color: #336; }
.msg pre { background: #f0f4ff; padding: 0.3em; max-width: 42em; }
"""


__all__ = ["RunRecord", "metric_panels", "read_run", "render_page", "write_view"]
