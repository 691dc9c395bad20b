"""Write docs/results.md from the files the studies wrote: no figure in it is typed by hand.

Each section embeds a study's ``results.md`` (benchmarks/study.py) or a latency JSON (``magrpo
eval --latency-items``) and states what holds from the same numbers: each verdict tests the
difference of two systems' held-out means on their per-seed figures (benchmarks/difference.py).
A study not run yet is named as not measured, with its command.

    .venv/bin/python benchmarks/results_doc.py          # after the studies below
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

from magrpo.tasks import get_task

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks' shared modules
from difference import Difference, detectable, difference, pooled_sd, power, seeds_for, verdict  # noqa: E402
from learning_check import LEDGER  # noqa: E402  (the learning ledger: the summarize team's runs by commit)
from protocols_study import ARMS, POWERED_SEEDS, before  # noqa: E402
from provenance import machine_kind  # noqa: E402
from study import UNTRAINED  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
#: the systems a study trains (the others are the untrained prompt-only set-ups)
TRAINED = ("team", "single-grpo")  # the critic baselines have their own section
#: how a verdict names a system
NAMES = {"team": "the team", "single-grpo": "single-agent GRPO", "parallel": "the untrained team"}
#: how a verdict is reached, said once at the top of the page
METHOD = (
    "How a verdict is reached: each one tests the difference of two systems' held-out means and states it "
    "with its 95% interval and two-sided p-value: above or below where p < 0.05, else not separated. Two "
    "trained systems: Welch's t-test on their per-seed figures, the interval from the t distribution with "
    "Welch-Satterthwaite degrees of freedom (one system's seeds may spread far wider than another's). An "
    "untrained set-up decodes greedily once on the same items and has no spread over seeds: the trained "
    "seeds are tested against its figure as a constant (one-sample t-test). The two-turn team's answers "
    "after feedback against its first answers, both from the same runs: a paired t-test of the per-seed "
    "differences. Whether two 95% intervals overlap is no test of the difference: they can overlap while "
    "the difference's own interval excludes 0. Why a t-test over seeds rather than a bootstrap: the "
    "`results.json` of sections 1 to 5 hold each run's mean over the held-out items, not per-item figures (section "
    "6's holds them too), so no bootstrap paired by item can be computed from them (and one over items would leave out how training varies from "
    "seed to seed); three seeds give a bootstrap ten distinct resamples, too few for an interval, where the "
    "t distribution allows for having few seeds. Each verdict is a test of its own at the 5% level, not "
    "corrected for the number of verdicts on the page."
)


def load(folder: str) -> dict | None:
    path = RESULTS / folder / "results.json"
    return json.loads(path.read_text()) if path.is_file() else None


def fig(summary: dict, system: str, key: str) -> str:
    mean, half = summary[system][key]
    return f"{mean:.3f} ± {half:.3f}"


def held_out(study: dict, system: str, key: str = "reward_normalised") -> list[float] | float:
    """A trained system's held-out figure per seed (in seed order), or an untrained set-up's one
    greedy run: a constant."""
    task = get_task(study["args"]["task"])
    runs = study["runs"][system]
    if runs[0]["seed"] is None:
        return task.with_normalised_return(runs[0]["held_out"])[key]
    return [task.with_normalised_return(run["held_out"])[key] for run in sorted(runs, key=lambda r: r["seed"])]


def between(study: dict, a: str, b: str, key: str = "reward_normalised") -> Difference:
    """How system ``a`` of ``study`` stands to system ``b`` on held-out ``key``."""
    return difference(held_out(study, a, key), held_out(study, b, key))


def bullets(lines: list[str]) -> list[str]:
    return [f"- {line}" for line in lines]


def seeds(study: dict, system: str) -> int:
    return sum(1 for run in study["runs"].get(system, []) if run.get("seed") is not None)


def command_block(command: str) -> list[str]:
    return ["```bash", command, "```", ""]


def not_measured(command: str) -> list[str]:
    return ["Not measured yet:", "", *command_block(command)]


def sittings(study: dict) -> list[str]:
    """How the study was run when not in one go: the last sitting's --resume and --rerun."""
    args = study["args"]
    if not args.get("resume"):
        return []
    rerun = (
        f" The last sitting ran `{args['rerun']}` again (`--rerun`) after a change to it." if args.get("rerun") else ""
    )
    return [f"Run in more than one sitting: the same command with `--resume` adds the runs a study lacks.{rerun}", ""]


def embed(folder: str, study: dict, command: str) -> list[str]:
    return [
        *command_block(command),
        *sittings(study),
        f"From `docs/results/{folder}/results.md` (`results.json` holds every run's curve and figures):",
        "",
        (RESULTS / folder / "results.md").read_text().strip(),
        "",
        f"![training reward per step](results/{folder}/reward_curves.png)",
        f"![held-out figures](results/{folder}/held_out.png)",
        "",
    ]


def trained_verdicts(study: dict, caveat: str) -> list[str]:
    """Which trained systems lack seeds, and how each stands on held-out normalised return."""
    s, out = study["summary"], []
    asked = study["args"]["seeds"]
    present = [system for system in TRAINED if system in s]
    short = [system for system in present if seeds(study, system) < asked]
    missing = [system for system in TRAINED if system not in s]
    if short or missing:
        out += [
            "",
            "Cut short by this 2-core CPU: "
            + "; ".join(
                [f"{system} has {seeds(study, system)} of {asked} seeds" for system in short]
                + [f"{system} has none" for system in missing]
            )
            + ".",
        ]
    # a test needs a spread over seeds: a trained system with one seed has none
    judged = [system for system in present if seeds(study, system) >= 2]
    verdicts = [
        verdict(NAMES[system], NAMES["parallel"], between(study, system, "parallel"))
        for system in judged
        if "parallel" in s
    ]
    if len(judged) < len(present):
        verdicts.append("a system with one seed has no spread to test, so no verdict")
    if "team" in judged and "single-grpo" in judged:
        verdicts.append(verdict(NAMES["team"], NAMES["single-grpo"], between(study, "team", "single-grpo")))
    if verdicts:
        out += ["", "On held-out normalised return (difference of means [95% interval], test):", "", *bullets(verdicts)]
    return out + (["", caveat] if verdicts and caveat else [])


def writing_section(task: str, number: str, reference: str) -> list[str]:
    out = [f"## {number}. Writing (`{task}`): team vs one model vs prompt-only set-ups", ""]
    command = (
        f".venv/bin/python benchmarks/study.py --task {task} --seeds 3 --steps 15 --max-new-tokens 64 \\\n"
        f"    --lr 2e-5 --eval-items 8 --output docs/results/{task}"
    )
    study = load(task)
    if study is None:
        return out + not_measured(command)
    s = study["summary"]
    out += embed(task, study, command)
    rouge = (
        f"ROUGE-L against the reference {reference}: team {fig(s, 'team', 'rougeL')}, untrained team "
        f"{fig(s, 'parallel', 'rougeL')}, so on ROUGE-L "
        f"{verdict(NAMES['team'], NAMES['parallel'], between(study, 'team', 'parallel', 'rougeL'))}. "
        "The writing reward is structural (docs/writing.md): ROUGE is reported beside it. "
        if "rougeL" in s["team"]
        else ""
    )
    labels = {
        "team": "the MAGRPO team",
        "single-grpo": "one model trained with the same trainer and tokens",
        "parallel": "the untrained team",
        "sequential": "sequential",
        "discussion": "discussion",
        "single": "one untrained model",
    }
    figures = ", ".join(
        f"{fig(s, system, 'reward_normalised')} for {label}" for system, label in labels.items() if system in s
    )
    start = s["parallel"]["reward_normalised"][0] if "parallel" in s else 0.0
    headroom = (
        f"The untrained team already scores {start:.2f} of the task's maximum reward: the reward leaves "
        "training little to gain here. "
        if start >= 0.75
        else ""
    )
    out.append(f"What holds here: held-out normalised return {figures}. {headroom}{rouge}".rstrip())
    return out + trained_verdicts(study, "") + [""]


#: the powered summarize study: the difference in held-out normalised return it is sized to separate,
#: with this power at 5% (two-sided), and the seeds and held-out items it runs
POWERED_EFFECT, POWERED_POWER, POWERED_SUMMARIZE_SEEDS = 0.2, 0.8, 10
POWERED_COMMAND = (
    f".venv/bin/python benchmarks/study.py --task summarize --seeds {POWERED_SUMMARIZE_SEEDS} --steps 15 --max-new-tokens 64 \\\n"
    "    --lr 2e-5 --eval-items 32 --output docs/results/summarize_powered --resume"
)


def planning_spread() -> tuple[float, str] | None:
    """The spread of a seed's held-out normalised return measured before the powered study, pooled
    over section 1's trained systems and the learning ledger's latest float32 team with the same
    settings, and what it was pooled over (None: section 1 not run)."""
    pilot = load("summarize")
    if pilot is None:
        return None
    groups = [held_out(pilot, system) for system in TRAINED if seeds(pilot, system) >= 2]
    names = [f"section 1's {NAMES[system].removeprefix('the ')}" for system in TRAINED if seeds(pilot, system) >= 2]
    maximum = get_task("summarize").max_reward
    same = [e for e in ledger_entries(pilot["args"]) if len(e["held_out_reward"].get("float32", {})) >= 2]
    if same:
        entry = same[-1]
        groups.append([r / maximum for r in entry["held_out_reward"]["float32"].values()])
        names.append(f"the learning ledger's float32 team (`{entry['produced_by']['commit']}`)")
    sizes = sorted({len(g) for g in groups})
    pooled_over = (
        f"{', '.join(names)}; {' or '.join(map(str, sizes))} seeds each, {pilot['args']['eval_items']} held-out items"
    )
    return pooled_sd(groups), pooled_over


def wider_spread() -> str:
    """The spread of section 1's team and section 5's taken as one system: the same settings in two
    sittings, so a shift between them counts as spread."""
    pilot, critics = load("summarize"), load("critics")
    if pilot is None or critics is None or "team" not in critics["runs"]:
        return ""
    sd = statistics.stdev(held_out(pilot, "team") + held_out(critics, "team"))
    return (
        f" Section 1's team and section 5's taken as one system (the same settings in two sittings, so a "
        f"shift between the sittings counts as spread): sd = {sd:.3f}, which asks for "
        f"{seeds_for(sd, POWERED_EFFECT, POWERED_POWER)} seeds and gives {POWERED_SUMMARIZE_SEEDS} seeds "
        f"{power(sd, POWERED_EFFECT, POWERED_SUMMARIZE_SEEDS):.0%} power."
    )


def headroom_note(start: float | None) -> str:
    """Whether the untrained team of the powered study, and of section 1b's `expand`, leave a reward
    room to learn (``start``: the untrained team's normalised return here)."""
    if start is None:
        return ""
    said = f"The untrained team starts at {start:.2f} of the maximum reward" + (
        ", so this reward leaves room to learn." if start < 0.75 else ", near the ceiling."
    )
    expand = load("expand")
    if expand is not None and "parallel" in expand["runs"]:
        ceiling = held_out(expand, "parallel")
        said += (
            f" `expand` (section 1b) starts at {ceiling:.2f} and is not powered here: a gain of "
            f"{POWERED_EFFECT:g} above its untrained team "
            + ("cannot exist" if ceiling > 1 - POWERED_EFFECT else "has little room")
            + ", and a reward with headroom for introductions would be a new task's definition, not a larger study."
        )
    return said


def ledger_entries(args: dict) -> list[dict]:
    """The learning ledger's entries run with the settings of a study's ``args``, oldest first."""
    if not LEDGER.is_file():
        return []
    entries = [json.loads(line) for line in LEDGER.read_text().splitlines()]
    return [e for e in entries if all(e["settings"].get(k) == args.get(k) for k in LEDGER_KEYS)]


def powered_section() -> list[str]:
    out = ["## 1a. Writing (`summarize`), powered: team vs one model vs prompt-only set-ups", ""]
    out += [
        f"Section 1's comparison again, sized to separate a difference of {POWERED_EFFECT:g} in held-out "
        f"normalised return with {POWERED_POWER:.0%} power: more seeds, and 32 held-out items (the same for "
        "every system) where section 1 had 8. The settings are otherwise section 1's. Float32, the CPU default.",
        "",
    ]
    plan = planning_spread()
    if plan is not None:
        sd, pooled_over = plan
        out += [
            f"**Power calculation.** The spread of one seed's held-out normalised return about its system's "
            f"mean, pooled over the runs measured before ({pooled_over}): sd = {sd:.3f}. At that spread a difference of {POWERED_EFFECT:g} is separated at 5% "
            f"(two-sided) with {POWERED_POWER:.0%} power by {seeds_for(sd, POWERED_EFFECT, POWERED_POWER)} "
            "seeds per system (the two-sample t-test's power from the noncentral t distribution, "
            "`benchmarks/difference.py`: `power`, `seeds_for`)."
            + wider_spread()
            + f" The study asks for {POWERED_SUMMARIZE_SEEDS} seeds per trained system. Held-out items: each run's figure is its mean over them, so more items shrink the part of the "
            "spread that comes from which few items were drawn.",
            "",
        ]
    study = load("summarize_powered")
    if study is None:
        return out + not_measured(POWERED_COMMAND)
    s = study["summary"]
    out += embed("summarize_powered", study, POWERED_COMMAND)
    judged = [system for system in TRAINED if seeds(study, system) >= 2]
    if judged:
        realised = pooled_sd([held_out(study, system) for system in judged])
        n = min(seeds(study, system) for system in judged)
        out += [
            f"The spread this study measured, pooled over {' and '.join(NAMES[x] for x in judged)}: sd = "
            f"{realised:.3f}; at it, {n} seeds per system separate {POWERED_EFFECT:g} with "
            f"{power(realised, POWERED_EFFECT, n):.0%} power, and a difference of "
            f"{detectable(realised, n, POWERED_POWER):.3f} with {POWERED_POWER:.0%}.",
            "",
        ]
    setups = [name for name in UNTRAINED if name in s]
    if setups:
        best = max(setups, key=lambda name: s[name]["reward_normalised"][0])
        start = s["parallel"]["reward_normalised"][0] if "parallel" in s else None
        lines = [
            verdict(NAMES[system], f"the best prompt-only set-up (`{best}`)", between(study, system, best))
            for system in judged
            if best != "parallel"
        ]
        if "rougeL" in s.get("team", {}) and "parallel" in s and "team" in judged:
            lines.append(
                verdict(NAMES["team"], NAMES["parallel"], between(study, "team", "parallel", "rougeL"))
                + " (ROUGE-L against the reference summary)"
            )
        out += [
            "Held-out normalised return of the prompt-only set-ups: "
            + ", ".join(f"{name} {s[name]['reward_normalised'][0]:.3f}" for name in setups)
            + f". {headroom_note(start)}",
            *([""] + bullets(lines) if lines else []),
        ]
    return out + trained_verdicts(study, "") + [""]


def coding_section() -> list[str]:
    out = ["## 2. Coding with the `qwen2.5-coder-0.5b` preset (LoRA): team vs one model vs prompt-only set-ups", ""]
    command = (
        ".venv/bin/python benchmarks/study.py --task coding --model qwen2.5-coder-0.5b --lora --seeds 3 --steps 3 \\\n"
        "    -G 4 --max-new-tokens 256 --eval-items 4 --lr 1e-4 --output docs/results/coding_qwen"
    )
    study = load("coding_qwen")
    if study is None:
        return out + not_measured(command)
    s = study["summary"]
    out += embed("coding_qwen", study, command)
    lines = []
    for system in s:
        n = seeds(study, system)
        label = f"{system} ({n} seed{'s' * (n != 1)})" if n else f"{system} (untrained, greedy)"
        lines.append(
            f"{label}: normalised return {fig(s, system, 'reward_normalised')}, tests passed "
            f"{fig(s, system, 'tests_passed')}, pass@1 {fig(s, system, 'pass@1')}"
        )
    out.append("Held out: " + "; ".join(lines) + ".")
    if "team" in s and "parallel" in s:
        schemes = sorted(k for k in s["team"] if k.startswith("scheme/"))
        before = ", ".join(f"{k.split('/')[1]} {s['parallel'][k][0]:.2f}" for k in schemes)
        after = ", ".join(f"{k.split('/')[1]} {s['team'][k][0]:.2f}" for k in schemes)
        out += [
            "",
            f"Cooperation schemes (fraction of held-out answers) before training (the untrained team): {before}; "
            f"after training (the team, mean over seeds): {after}.",
        ]
        if "single-grpo" in s:
            calls = {system: 1 - s[system]["scheme/none"][0] for system in TRAINED}
            out += [
                "",
                f"The main function calls `aux` in {calls['team']:.2f} of the trained team's answers and in "
                f"{calls['single-grpo']:.2f} of single-agent GRPO's, whose one model writes both functions. The "
                "team's main agent is told that `aux` exists, not what it does (its prompt: `src/magrpo/tasks/coding.py`).",
            ]
    out += trained_verdicts(
        study,
        "A few LoRA steps on a CPU are far from the paper's hundreds of steps on GPUs: "
        "whatever is not separated here is not shown either way.",
    )
    return out + [""]


def turns_section() -> list[str]:
    out = ["## 3. One turn vs two turns with execution feedback (coding, bundled model, same tokens)", ""]
    one_cmd = (
        ".venv/bin/python benchmarks/study.py --task coding --seeds 3 --steps 10 -G 8 --max-new-tokens 128 \\\n"
        "    --eval-items 8 --lr 2e-5 --systems team --output docs/results/coding_1turn"
    )
    two_cmd = (
        ".venv/bin/python benchmarks/study.py --task coding --seeds 3 --steps 10 -G 4 --turns 2 --max-new-tokens 128 \\\n"
        "    --eval-items 8 --lr 2e-5 --systems team --output docs/results/coding_2turn"
    )
    one, two = load("coding_1turn"), load("coding_2turn")
    out += [
        "Both teams generate the same tokens per step: the one-turn team samples G = 8 completions of up to "
        "128 tokens per agent; the two-turn team G = 4 at the first turn and G = 4 more after execution "
        "feedback on the best first joint action (`--expand-k 1`), the same steps and learning rate.",
        "",
    ]
    for study, folder, command, title in (
        (one, "coding_1turn", one_cmd, "One turn"),
        (two, "coding_2turn", two_cmd, "Two turns"),
    ):
        out += [f"### {title}", ""]
        out += embed(folder, study, command) if study is not None else not_measured(command)
    if one is not None and two is not None:
        a, b = one["summary"]["team"], two["summary"]["team"]
        cells = "; ".join(
            f"{k}: one turn {a[k][0]:.3f} ± {a[k][1]:.3f}, two turns {b[k][0]:.3f} ± {b[k][1]:.3f}"
            for k in ("reward_normalised", "tests_passed", "pass@1")
            if k in a and k in b
        )
        out.append(f"Held out, after the last turn ({seeds(one, 'team')} and {seeds(two, 'team')} seeds): {cells}.")
        if "turn_1/reward_normalised" in b:
            first, second = b["turn_1/reward_normalised"], b["turn_2/reward_normalised"]
            feedback = difference(
                held_out(two, "team", "turn_2/reward_normalised"),
                held_out(two, "team", "turn_1/reward_normalised"),
                paired=True,
            )
            out.append(
                f"Within the two-turn team, the held-out normalised return after feedback is "
                f"{second[0]:.3f} ± {second[1]:.3f} against {first[0]:.3f} ± {first[1]:.3f} for its first answers: "
                f"{feedback.relation} them, {feedback}."
            )
        turns = difference(held_out(two, "team"), held_out(one, "team"))
        out.append(f"On held-out normalised return {verdict('the two-turn team', 'the one-turn team', turns)}.")
    return out + [""]


def latency_section() -> list[str]:
    out = ["## 4. Latency to a complete answer: team vs one model", ""]
    command = (
        "magrpo eval --task summarize --eval-items 4 --latency-items 4 --output docs/results/latency_summarize.json"
    )
    path = RESULTS / "latency_summarize.json"
    if not path.is_file():
        return out + not_measured(command)
    f = json.loads(path.read_text())
    return out + [
        *command_block(command),
        "| | seconds per complete answer | tokens per answer |",
        "|---|---:|---:|",
        f"| team (agents at the same time) | {f['latency/team_seconds']:.2f} | {f['latency/team_tokens_per_answer']:.0f} |",
        f"| one model writing both parts | {f['latency/single_agent_seconds']:.2f} | "
        f"{f['latency/single_agent_tokens_per_answer']:.0f} |",
        "",
        f"Speed-up x{f['latency/speedup']:.2f} on {f['latency/cores']:.0f} cores, greedy, {f['latency/items']:.0f} items.",
        "",
    ]


def critics_section() -> list[str]:
    out = ["## 5. Critic baselines (`summarize`): MAGRPO vs MAAC vs IAC on the same samples", ""]
    command = (
        ".venv/bin/python benchmarks/study.py --task summarize --seeds 3 --steps 15 --max-new-tokens 64 \\\n"
        "    --lr 2e-5 --eval-items 8 --systems team,maac,iac,maac-q,iac-q,parallel --output docs/results/critics"
    )
    study = load("critics")
    out += [
        "The same team, task, G = 4 samples per item, reward, steps and learning rate; only the baseline "
        "differs: the group's mean (MAGRPO, `team`), one centralised critic of the joint observation (`maac`), or "
        "each agent's own critic (`iac`), value heads on the agents' models at the default critic rate "
        "(docs/critics.md); `maac-q` and `iac-q` are the same critics valuing the action too (Q(s, a), "
        "`critic_type='q'`, the baseline the mean Q of the node's joint actions).",
        "",
    ]
    if study is None:
        return out + not_measured(command)
    s, runs = study["summary"], study["runs"]
    out += embed("critics", study, command)
    present = [system for system in ("team", "maac", "iac", "maac-q", "iac-q") if system in s]
    figures = ", ".join(f"{system} {fig(s, system, 'reward_normalised')}" for system in present)
    verdicts = [
        verdict(system, "MAGRPO", between(study, system, "team"))
        for system in present
        if system != "team" and "team" in s
    ]
    if "parallel" in s:
        verdicts += [
            verdict("MAGRPO" if system == "team" else system, NAMES["parallel"], between(study, system, "parallel"))
            for system in present
        ]
    out.append(f"Held-out normalised return: {figures}.")
    if verdicts:
        out += ["", "On it (difference of means [95% interval], test):", "", *bullets(verdicts)]
    pairs = [(a, b) for i, a in enumerate(present) for b in present[i + 1 :]]
    if pairs and all(between(study, a, b).relation == "not separated from" for a, b in pairs):
        out += [
            "",
            "At this budget none of MAGRPO and the critic baselines is shown better than another "
            "(Welch, p ≥ 0.05 for each pair).",
        ]
    # how far each critic got: its mean value against the mean reward over the last 3 steps, and
    # the peak of its mean value curve (mean over seeds)
    tracking = []
    for system in ("maac", "iac", "maac-q", "iac-q"):
        seeds_runs = [r for r in runs.get(system, []) if r.get("value_mean")]
        if seeds_runs:
            value = sum(sum(r["value_mean"][-3:]) / 3 for r in seeds_runs) / len(seeds_runs)
            reward = sum(sum(r["curve"][-3:]) / 3 for r in seeds_runs) / len(seeds_runs)
            curve = [sum(v) / len(v) for v in zip(*(r["value_mean"] for r in seeds_runs))]
            peak = max(range(len(curve)), key=curve.__getitem__)
            explained = ""
            if system.endswith("-q"):  # a Q critic's values differ between the joint actions of a node
                late = [e for r in seeds_runs for e in r["explained_variance"][-3:] if e == e]
                explained = f", explained variance {sum(late) / len(late):+.3f}" if late else ""
            tracking.append(
                f"{system} {value:.3f} against a mean training reward of {reward:.3f} (its mean value peaked at "
                f"{curve[peak]:.3f} at step {peak + 1}{explained})"
            )
    if tracking:
        out += [
            "",
            "The critics' mean value over the last 3 training steps (mean over seeds): "
            + "; ".join(tracking)
            + ". With one item per step the step's G joint actions share one node, so a V critic's explained "
            "variance is 0 by construction here; the value's distance from the reward is what a short run shows "
            "(a Q critic values each joint action, so its explained variance is its own).",
        ]
    earlier = load("summarize")
    if earlier is not None and "team" in earlier["summary"] and "team" in s:
        sittings = difference(held_out(earlier, "team"), held_out(study, "team"))
        out += [
            "",
            f"The MAGRPO team of section 1 ran with the same settings and seeds in an earlier sitting: "
            f"{fig(earlier['summary'], 'team', 'reward_normalised')} there, {fig(s, 'team', 'reward_normalised')} "
            f"here; {verdict('the earlier team', 'this one', sittings)}. "
            + (
                "The same settings and seeds gave teams further apart than their spread over seeds explains: "
                "something the runs do not record differs between the sittings, and a comparison of two "
                "studies (section 3's) may carry such a difference beside the one it tests."
                if sittings.relation != "not separated from"
                else "Fifteen steps of one item leave wide intervals."
            ),
        ]
        if "single-grpo" in earlier["runs"]:
            across = difference(held_out(study, "team"), held_out(earlier, "single-grpo"))
            out[-1] += f" Set against section 1's single-agent GRPO, {verdict('this team', 'it', across)}."
    return out + [""]


#: how the protocols section names an arm
ARM_NAMES = {
    "simultaneous": "the simultaneous team",
    "sequential": "the sequential team",
    "sequential-counterfactual": "the sequential team with counterfactual credit",
}


def protocols_command(args: dict | None) -> str:
    """The protocols study's command, at the settings it ran with (``args``: its results.json's)."""
    a = args or {
        "seeds": POWERED_SEEDS,
        "steps": 8,
        "num_generations": 4,
        "max_new_tokens": 64,
        "lr": 2e-5,
        "eval_items": 32,
        "num_continuations": None,
    }
    continuations = "" if a["num_continuations"] is None else f" --num-continuations {a['num_continuations']}"
    setups = "" if a.get("setups", ",".join(UNTRAINED)) == ",".join(UNTRAINED) else f' --setups "{a["setups"]}"'
    return (
        f".venv/bin/python benchmarks/protocols_study.py --seeds {a['seeds']} --steps {a['steps']} "
        f"-G {a['num_generations']}{continuations} \\\n    --max-new-tokens {a['max_new_tokens']} --lr {a['lr']:g} "
        f"--eval-items {a['eval_items']}{setups} --output docs/results/protocols --write-doc"
    )


def protocols_section() -> list[str]:
    out = ["## 6. Training protocols (`coding-paper`): simultaneous vs sequential vs counterfactual credit", ""]
    study = load("protocols")
    out += [
        "The same team (the bundled model as helper and main agent), reward (the paper's, maximum 4), "
        "training items, steps, G, tokens and learning rate in each arm; only how a step's turn is played and "
        "credited differs (docs/protocols.md): `simultaneous` (the default MAGRPO team: both agents answer at "
        "once), `sequential` (`protocol=sequential`, `joint_mode=cross`: the main agent answers after the "
        "helper and sees its code, several answers per helper answer), `sequential-counterfactual` (the same "
        "tree, `credit=counterfactual`: each answer compared only with the alternatives that share its "
        "context). Held out: HumanEval's problems 132-163, one greedy answer each under the arm's own "
        "protocol. Before training stands the untrained team of the arm's protocol (`untrained:...`, "
        "greedy, so one run for every seed); the prompt-only set-ups (`setup:...`) are section 1's.",
        "",
    ]
    if study is None:
        return out + not_measured(protocols_command(None))
    s, runs = study["summary"], study["runs"]
    arms = [arm for arm in ARMS if arm in runs]
    counts = {arm: seeds(study, arm) for arm in arms}
    items = int(next(iter(runs.values()))[0]["held_out"]["items"])
    finished = min(counts.values(), default=0)
    status = (
        "Seeds finished: "
        + ", ".join(f"{arm} {counts[arm]}" for arm in arms)
        + f" of the {POWERED_SEEDS} per arm the study asks for; {items} held-out items per run. "
    )
    if finished < POWERED_SEEDS:
        status += (
            f"**Partial: a pilot with fewer than {POWERED_SEEDS} seeds per arm, not the powered result.** "
            "Its verdicts test the difference at this count of seeds; an arm not separated here is not "
            "shown equal."
        )
    if not any(name.startswith("setup:") for name in runs):
        status = status.rstrip() + " The prompt-only set-ups were left out of these runs (`--setups`), for time."
    out += [status, "", *embed("protocols", study, protocols_command(study["args"]))]
    task = get_task(study["args"]["task"])

    def normalised(run: dict) -> dict:
        return task.with_normalised_return(run["held_out"])

    out += [
        "Before and after training (held out; after: mean ± 95% interval over seeds):",
        "",
        "| arm | seeds | minutes per run | normalised return: untrained → trained | helper used: untrained → trained |",
        "|---|---:|---:|---|---|",
    ]
    for arm in arms:
        untrained = normalised(runs[before(arm)][0])
        minutes = sum(r["seconds"] for r in runs[arm]) / len(runs[arm]) / 60
        out.append(
            f"| {arm} | {counts[arm]} | {minutes:.1f} | {untrained['reward_normalised']:.3f} → "
            f"{fig(s, arm, 'reward_normalised')} | {untrained['helper_used']:.3f} → {fig(s, arm, 'helper_used')} |"
        )
    out += [
        "",
        "Each run (held out):",
        "",
        "| arm | seed | normalised return | tests passed | helper used | minutes |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for arm in arms:
        for run in sorted(runs[arm], key=lambda r: r["seed"]):
            f = normalised(run)
            out.append(
                f"| {arm} | {run['seed']} | {f['reward_normalised']:.3f} | {f['tests_passed']:.3f} | "
                f"{f['helper_used']:.3f} | {run['seconds'] / 60:.1f} |"
            )
    judged = [arm for arm in arms if counts[arm] >= 2]
    verdicts = []
    for key, label in (("reward_normalised", "normalised return"), ("helper_used", "helper use")):
        pairs = [(a, b) for i, b in enumerate(judged) for a in judged[i + 1 :]]
        verdicts += [f"{label}: {verdict(ARM_NAMES[a], ARM_NAMES[b], between(study, a, b, key))}" for a, b in pairs]
        verdicts += [
            f"{label}: {verdict(ARM_NAMES[arm], 'its untrained team', between(study, arm, before(arm), key))}"
            for arm in judged
        ]
    setups = [name for name in runs if name.startswith("setup:")]
    if setups:  # the strongest prompt-only set-up on the page's main figure
        best = max(setups, key=lambda name: held_out(study, name))
        verdicts += [
            f"normalised return: {verdict(ARM_NAMES[arm], f'the best prompt-only set-up (`{best}`)', between(study, arm, best))}"
            for arm in judged
        ]
    if len(judged) < len(arms):
        verdicts.append("an arm with one seed has no spread to test, so no verdict on it")
    out += ["", "Held out (difference of means [95% interval], test):", "", *bullets(verdicts)]
    return out + helper_reach_lines(study["args"]) + [""]


#: the sample of each protocol's untrained team (benchmarks/helper_reach.py --protocol), by arm
HELPER_REACH = {"simultaneous": "helper_reach", "sequential": "helper_reach_sequential"}


def helper_reach_lines(args: dict) -> list[str]:
    """What training had to work with for the helper-use figure to move: how often the untrained
    team's training samples reach the paper's helper bonus (benchmarks/helper_reach.py, a sample
    per protocol), and the steps of ``args``' arms that take to meet it once; an arm whose
    protocol was not sampled is not extrapolated to."""
    samples = {
        arm: json.loads(path.read_text())
        for arm, folder in HELPER_REACH.items()
        if (path := RESULTS / folder / "results.json").is_file()
    }
    if not samples:
        return []

    def share(counted: dict, name: str) -> str:
        c = counted[name]
        low, high = c["interval"]
        return f"{c['count']} ({c['share']:.3f}, 95% interval [{low:.3f}, {high:.3f}])"

    # joint answers a step samples: G per item simultaneously, G x M in a sequential tree
    g, items = args["num_generations"], args.get("batch_size", 1)
    per_step = {"simultaneous": g * items, "sequential": g * (args.get("num_continuations") or g) * items}
    said, each, unpaid_chance, paid_any = [], [], {}, {}
    for arm, reach in samples.items():
        counted, settings = reach["untrained"], reach["settings"]
        if settings.get("protocol", "simultaneous") != arm:
            raise ValueError(f"{HELPER_REACH[arm]}/results.json samples the {settings['protocol']} team, not the {arm}")
        paid = counted["bonus_paid"]
        paid_any[arm] = paid["count"] > 0
        # none paid: the interval's upper end bounds the share, so the steps (rounded down) from below
        rate = paid["share"] if paid["count"] else paid["interval"][1]
        steps = max(1.0, 1 / (per_step[arm] * rate))
        # the chance that the steps run sampled no paid answer at all (at least this, where none was paid)
        unpaid_chance[arm] = (1 - rate) ** (per_step[arm] * args["steps"])
        each.append(
            (f"about once in {steps:.0f} steps" if paid["count"] else f"once in {math.floor(steps)} steps or more")
            + f" of the {arm} team ({per_step[arm]} joint answers a step)"
        )
        command = f"--items {settings['items']} -G {settings['num_generations']}"
        if arm == "sequential":
            command += f" --protocol sequential --num-continuations {settings['num_continuations']}"
        said.append(
            f"the {arm} team's (`benchmarks/helper_reach.py {command}`: {counted['answers']} joint answers "
            f"on the first {settings['items']} training problems, {settings['max_new_tokens']} new tokens): the "
            f"main function calls `aux` in {share(counted, 'helper_called')}, a test passes in "
            f"{share(counted, 'a_test_passed')}, and the bonus is paid in {share(counted, 'bonus_paid')}"
        )
    never_paid = not any(paid_any.values())
    lead = "None was paid: at the intervals' upper ends" if never_paid else "At these shares"
    when = f"{lead} a first paid sample comes {' and '.join(each)}"
    beyond = all(chance > 0.5 for chance in unpaid_chance.values())
    chances = ", ".join(
        f"{'' if paid_any[arm] else 'at least '}{chance:.2f} for the {arm} team"
        for arm, chance in unpaid_chance.items()
    )
    unsampled = [arm for arm in per_step if arm not in samples]
    return [
        "",
        "What training had to work with: the paper's reward pays for calling the helper only where at least one "
        "unit test passes and `aux` is defined (src/magrpo/rewards/paper_coding.py), and an update can only "
        "favour what some sample was paid for. The untrained team's training samples, drawn as a training step "
        "draws them (temperature 1, the training split, no update): "
        + "; ".join(said)
        + f". {when}, against the {args['steps']} steps run here (the chance that they sampled no paid answer at "
        f"all: {chances})"
        + (
            ": in runs this short the bonus more likely than not never paid, so helper use had little or nothing "
            "to move it."
            if beyond
            else "; these samples do not show that the bonus never paid in runs this short (a larger sample of the "
            "untrained team would narrow the upper end of a share where none was paid)."
        )
        + "".join(f" The {arm} team was not sampled: nothing is said of it." for arm in unsampled)
        + " Helper use needs a team whose samples pass tests and call the helper; the `qwen2.5-coder-0.5b` "
        "preset passes a third of the held-out tests before training (section 2, task `coding`, whose reward "
        "scores helper use differently), though in section 2's 3 steps its main function did not call `aux` "
        "either.",
    ]


#: the study arguments a ledger entry's settings name (the same runs: study.py's train_team)
LEDGER_KEYS = ("task", "model", "steps", "batch_size", "num_generations", "max_new_tokens", "lr", "eval_items", "turns")


def ledger_team(study: dict) -> tuple[dict, list[float]] | None:
    """The latest float32 ledger entry run with ``study``'s settings on the same machine kind, and
    its team's per-seed held-out reward on the seeds the study ran (None: no such entry)."""
    made = [run["produced_by"] for runs in study["runs"].values() for run in runs if run.get("produced_by")]
    kind = machine_kind(made[0]) if made else None
    seeds = sorted({run["seed"] for runs in study["runs"].values() for run in runs if run.get("seed") is not None})
    found = None
    for entry in ledger_entries(study["args"]):
        per_seed = entry["held_out_reward"].get("float32", {})
        if machine_kind(entry["produced_by"]) == kind and all(str(k) in per_seed for k in seeds):
            found = (entry, [per_seed[str(k)] for k in seeds])
    return found


def preference_section() -> list[str]:
    out = ["## 7. Preferences (`summarize`): MADPO beside the MAGRPO team", ""]
    command = (
        ".venv/bin/python benchmarks/study.py --task summarize --seeds 3 --steps 15 --max-new-tokens 64 \\\n"
        "    --lr 2e-5 --eval-items 8 --systems madpo --output docs/results/madpo"
    )
    out += [
        "The team of sections 1 and 5 (the same task, items, G = 4 joint actions per item, tokens, steps, "
        "learning rate and seeds) trained with MADPO (`algorithm='madpo'`, docs/preference.md): each agent's "
        "DPO loss on the ordered pairs of a node's joint actions ranked by their joint reward, against its "
        "initial policy as the reference, instead of MAGRPO's group-relative policy gradient.",
        "",
    ]
    study = load("madpo")
    if study is None:
        return out + not_measured(command)
    out += embed("madpo", study, command)
    madpo = held_out(study, "madpo", "reward")
    team = ledger_team(study)
    if team is None:
        return out + ["No learning-ledger entry of the MAGRPO team with these settings on this machine kind.", ""]
    entry, rewards = team
    maximum = get_task("summarize").max_reward
    commit = entry["produced_by"]["commit"]
    out += [
        f"Beside it, the MAGRPO team of the learning ledger (`docs/results/learning.jsonl`, commit `{commit}`, "
        f"float32, the same settings, seeds and machine kind, study.py's own `train_team`): held-out reward "
        f"{', '.join(f'{r:.3f}' for r in rewards)} per seed, MADPO's {', '.join(f'{r:.3f}' for r in madpo)}. "
        "The two come from different sittings and commits (a ledger entry is checked seed by seed against "
        "the next: on this machine a seed's run repeats to the last digit while the maths stays the same).",
        "",
        *bullets(
            [
                verdict("MADPO", "the MAGRPO team", difference(madpo, rewards)) + " (held-out reward)",
                f"normalised (reward / {maximum:g}): MADPO {sum(madpo) / len(madpo) / maximum:.3f}, the MAGRPO team "
                f"{sum(rewards) / len(rewards) / maximum:.3f}",
            ]
        ),
        "",
    ]
    return out


def parity_section() -> list[str]:
    out = ["## 8. Learning parity with TRL's GRPOTrainer (one agent)", ""]
    out += [
        "One agent, no team: the bundled model trained by magrpo and by TRL's `GRPOTrainer` with the same "
        "reward (a reply of a target length), prompts, settings (`loss_type='grpo'`, advantages centred and "
        "not scaled, no KL term, float32, the same learning rate, G and tokens) and seeds, held out through one "
        "evaluation function; `benchmarks/trl_parity.py` says how each setting maps. The two libraries draw "
        "different random numbers, so the verdict is Welch's t over seeds, not a paired test.",
        "",
    ]
    study = load("trl_parity")
    if study is None:
        return out + not_measured(".venv/bin/python benchmarks/trl_parity.py --seeds 4 --steps 20")
    seeds_run = {int(key.split("/")[1]) for key in study["runs"]}
    command = f".venv/bin/python benchmarks/trl_parity.py --seeds {len(seeds_run)} --steps {study['settings']['steps']}"
    page = (RESULTS / "trl_parity" / "README.md").read_text().split("\n", 1)[1].strip()  # without its title
    return out + [*command_block(command), "From `docs/results/trl_parity/README.md`:", "", page, ""]


def main() -> None:
    lines = [
        "# Results: does MAGRPO beat the alternatives at this scale?",
        "",
        "Every number below comes from a file a command wrote (this page is written by "
        "`benchmarks/results_doc.py` from them); the commands are given. Measured on a 2-core CPU machine "
        "without a GPU.",
        "",
        METHOD,
        "",
    ]
    lines += writing_section("summarize", "1", "summary")
    lines += powered_section()
    lines += writing_section("expand", "1b", "introduction")
    for section in (
        coding_section,
        turns_section,
        latency_section,
        critics_section,
        protocols_section,
        preference_section,
        parity_section,
    ):
        lines += section()
    (ROOT / "docs" / "results.md").write_text("\n".join(lines).rstrip() + "\n")
    print(f"wrote {ROOT / 'docs' / 'results.md'}")


if __name__ == "__main__":
    main()
