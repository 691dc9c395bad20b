"""The level-wise coding reward for a helper + main team (the paper's coding task).

Agent 1 writes a helper function ``aux``; agent 2 writes the task's entry-point function, which
may call ``aux``. Levels, each paid only when the one before it pays (defaults of
:class:`CodingRewardConfig`, maximum 5.5):

1. defined (+1.0): agent 1's code defines a top-level function ``aux`` and agent 2's the entry
   point, read from the syntax tree (from Python's tokens where a part does not parse), so a
   ``def aux(`` inside a string or a comment defines nothing.
2. parses (+1.0): both parts parse, and so does the program combined from them.
3. tests (+3.0 x fraction): the fraction of the problem's unit tests the program passes, run in
   the sandbox (:mod:`magrpo.sandbox`), never in this process. Only plain values count as
   results: an object whose ``__eq__`` or ``__bool__`` always says yes passes nothing.
4. cooperation, when at least one test passes and agent 1's ``aux`` really did work while the
   tests ran (the calls that returned are counted in the sandbox, however ``aux`` was referenced:
   ``aux(x)``, ``map(aux, xs)``, ``key=aux``; a nested or shadowing ``aux`` of the main agent, a
   call in dead code, or a call that raises into a fallback is never agent 1's helper doing
   work): decided by what ran, not by the syntax. The tests run once more with ``aux`` replaced
   by a stub returning None: +0.5 when a test that passed fails without the helper (its work
   reaches a checked result), -0.5 when no test changes (its result is thrown away, however
   cleverly); 0 when the helper did no work.

The combined program is: the problem's own imports, then from agent 1's part its imports and
every function except the entry point, then from agent 2's part its imports and every function
except ``aux``. Other top-level statements (example calls, prints) are dropped, so neither agent
can overwrite the other's function or run code at import time.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from dataclasses import dataclass
from typing import Any, Sequence

from magrpo.sandbox import SandboxLimits, TestRunResult, run_tests_many

FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


@dataclass(frozen=True)
class CodingRewardConfig:
    defined: float = 1.0
    parses: float = 1.0
    tests: float = 3.0
    cooperation_bonus: float = 0.5
    ignored_helper_penalty: float = 0.5
    helper_name: str = "aux"
    #: agent 1 may pass (an empty part): level 1 then asks only for agent 2's entry point, and
    #: the cooperation level pays nothing (there is no helper), so a pass is worth at most 5.0
    helper_may_pass: bool = False

    @property
    def maximum(self) -> float:
        return self.defined + self.parses + self.tests + self.cooperation_bonus


def extract_code(text: str) -> str:
    """The code in a completion: the fenced blocks joined if there are any, else the text."""
    blocks = FENCE.findall(text)
    return "\n\n".join(b.strip("\n") for b in blocks) if blocks else text


def top_level_function(tree: ast.Module | None, name: str) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    """The module's top-level function ``name`` (None when the code did not parse or lacks it)."""
    if tree is None:
        return None
    return next(
        (n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name), None
    )


def is_call_of(node: ast.AST, name: str) -> bool:
    """``node`` is a call of the plain name ``name`` (``aux(...)``)."""
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == name


def calls_of(func: ast.AST, name: str) -> list[ast.Call]:
    """Every call of ``name`` inside ``func``."""
    return [n for n in ast.walk(func) if is_call_of(n, name)]


def defines_function(code: str, name: str) -> bool:
    """``code`` defines a top-level function ``name`` (syntax tree). Code that does not parse is
    read token by token: a ``def name(`` made of code tokens, not of a string or a comment."""
    tree = _parse(code)
    if tree is not None:
        return top_level_function(tree, name) is not None
    names: list[str] = []
    try:
        for token in tokenize.generate_tokens(io.StringIO(code).readline):
            if token.type in (tokenize.NAME, tokenize.OP):
                names.append(token.string)
                if names[-3:] == ["def", name, "("]:
                    return True
    except (tokenize.TokenError, SyntaxError, IndentationError):
        pass
    return False


def _parse(code: str) -> ast.Module | None:
    try:
        return ast.parse(code)
    except (SyntaxError, ValueError):
        return None


def _kept_source(code: str, tree: ast.Module, drop_function: str) -> list[str]:
    kept = []
    for node in tree.body:
        is_import = isinstance(node, (ast.Import, ast.ImportFrom))
        is_def = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        if is_import or (is_def and node.name != drop_function):
            kept.append(ast.get_source_segment(code, node, padded=False) or "")
    return kept


def problem_imports(problem_prompt: str) -> list[str]:
    tree = _parse(problem_prompt)
    if tree is None:
        return []
    return [
        ast.get_source_segment(problem_prompt, n) or ""
        for n in tree.body
        if isinstance(n, (ast.Import, ast.ImportFrom))
    ]


def combine_program(
    helper_code: str, main_code: str, entry_point: str, problem_prompt: str = "", helper_name: str = "aux"
) -> str | None:
    """The program the tests run, or None when a part does not parse (see the module docstring)."""
    helper_tree, main_tree = _parse(helper_code), _parse(main_code)
    if helper_tree is None or main_tree is None:
        return None
    parts = (
        problem_imports(problem_prompt)
        + _kept_source(helper_code, helper_tree, entry_point)
        + _kept_source(main_code, main_tree, helper_name)
    )
    program = "\n\n".join(p for p in parts if p)
    return program + "\n" if _parse(program) is not None else None


def split_whole_program(reply: str, entry_point: str, helper_name: str = "aux") -> tuple[str, str]:
    """One model's whole program cut into the team's two parts: (everything but the entry point,
    everything but the helper), each with the imports, so :func:`combine_program` rebuilds it.
    Code that does not parse goes whole into both parts (it fails the parse level either way)."""
    code = extract_code(reply)
    tree = _parse(code)
    if tree is None:
        return code, code
    return ("\n\n".join(_kept_source(code, tree, entry_point)), "\n\n".join(_kept_source(code, tree, helper_name)))


def helper_usage(main_code: str, entry_point: str, helper_name: str = "aux") -> str:
    """How the entry point treats the helper, read from its syntax tree: "used" (every call's
    result is used and one reaches the return value), "ignored" (a result is thrown away or never
    reaches the return value) or "absent" (no call, or the name is the main agent's own: a nested
    function, a parameter, an assignment or an import of that name inside the entry point)."""
    func = top_level_function(_parse(main_code), entry_point)
    if func is None or _binds_locally(func, helper_name):
        return "absent"
    parents: dict[ast.AST, ast.AST] = {}
    for parent in ast.walk(func):
        for child in ast.iter_child_nodes(parent):
            parents[child] = parent
    calls = calls_of(func, helper_name)
    loaded = {n.id for n in ast.walk(func) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    if not calls:
        # passed by name (map(aux, xs), key=aux): the syntax cannot tell more; the sandbox's
        # counterfactual decides (decide_helper_use_by_counterfactual)
        return "used" if helper_name in loaded else "absent"
    for call in calls:
        parent = parents.get(call)
        if isinstance(parent, ast.Expr):
            return "ignored"  # a bare call statement discards the value
        if isinstance(parent, (ast.Assign, ast.AnnAssign)):
            targets = parent.targets if isinstance(parent, ast.Assign) else [parent.target]
            names = {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
            if names and not names & loaded:
                return "ignored"  # assigned to a variable nobody reads
    return "used" if _reaches_return(func, helper_name) else "ignored"


def _binds_locally(func: ast.AST, name: str) -> bool:
    """The entry point makes ``name`` its own (so calls of it never reach agent 1's helper)."""
    for node in ast.walk(func):
        if (
            node is not func
            and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and node.name == name
        ):
            return True
        if isinstance(node, ast.arg) and node.arg == name:
            return True
        if isinstance(node, ast.Name) and node.id == name and isinstance(node.ctx, (ast.Store, ast.Del)):
            return True
        if isinstance(node, (ast.Import, ast.ImportFrom)) and any(
            (a.asname or a.name.split(".")[0]) == name for a in node.names
        ):
            return True
    return False


def _reaches_return(func: ast.AST, helper_name: str) -> bool:
    """Some ``return`` (or ``yield``) of the entry point depends on a call of the helper: through
    its value, through variables assigned from it (a fixed point over the function's
    assignments), or through a condition (``if aux(x): return ...``, ``if not aux(x): raise``, a
    variable set in a branch the helper decides)."""

    def mentions(expr: ast.AST | None, tainted: set[str]) -> bool:
        if expr is None:
            return False
        for n in ast.walk(expr):
            if is_call_of(n, helper_name):
                return True
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and n.id in tainted:
                return True
        return False

    tainted: set[str] = set()
    changed = True
    while changed:
        changed = False
        for node in ast.walk(func):
            value, targets = None, []
            if isinstance(node, ast.Assign):
                value, targets = node.value, node.targets
            elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
                value, targets = node.value, [node.target]
            elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
                value, targets = node.iter, [node.target]
            elif isinstance(node, ast.NamedExpr):
                value, targets = node.value, [node.target]
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
            ):
                # xs.append(aux(x)), d.update(...): the object called on carries the result
                if any(mentions(arg, tainted) for arg in [*node.args, *[k.value for k in node.keywords]]):
                    value, targets = node, [node.func.value]
            elif isinstance(node, (ast.If, ast.While)) and mentions(node.test, tainted):
                # the helper decides this branch: whatever it returns, raises or sets depends on it
                inside = [n for part in (node.body, node.orelse) for stmt in part for n in ast.walk(stmt)]
                if any(isinstance(n, (ast.Return, ast.Raise, ast.Yield, ast.YieldFrom)) for n in inside):
                    return True
                value, targets = (
                    node.test,
                    [n for n in inside if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)],
                )
            if value is not None and mentions(value, tainted):
                for target in targets:
                    for n in ast.walk(target):
                        if isinstance(n, ast.Name) and n.id not in tainted:
                            tainted.add(n.id)
                            changed = True
    return any(
        isinstance(n, (ast.Return, ast.Yield, ast.YieldFrom)) and mentions(n.value, tainted) for n in ast.walk(func)
    )


@dataclass
class CodingScore:
    defined: bool
    parses: bool
    tests_passed: int
    tests_total: int
    helper_usage: str
    reward: float
    run: TestRunResult | None = None
    #: the tests ran a second time with the helper stubbed out (see decide_helper_use_by_counterfactual)
    counterfactual: bool = False

    @property
    def fraction(self) -> float:
        return self.tests_passed / self.tests_total if self.tests_total else 0.0

    def figures(self) -> dict[str, float]:
        return {
            "reward": self.reward,
            "level_defined": float(self.defined),
            "level_parses": float(self.parses),
            "tests_passed": self.fraction,
            "pass@1": float(self.tests_total > 0 and self.tests_passed == self.tests_total),
            "helper_used": float(self.helper_usage == "used"),
            "helper_counterfactual": float(self.counterfactual),
        }

    @property
    def helper_ran(self) -> bool:
        """Agent 1's helper returned from a call while the tests ran (counted in the sandbox)."""
        return self.run is not None and self.run.calls > 0


def score_coding_batch(
    completions: Sequence[tuple[str, str]],
    problems: Sequence[dict[str, Any]],
    config: CodingRewardConfig = CodingRewardConfig(),
    limits: SandboxLimits | None = None,
) -> list[CodingScore]:
    """Score (helper, main) pairs; ``problems[k]`` has ``prompt``, ``test`` and ``entry_point``.
    All programs that reach level 3 run concurrently in the sandbox pool."""
    scores: list[CodingScore] = []
    jobs: list[dict[str, Any]] = []
    job_of: dict[int, int] = {}
    for k, ((helper_text, main_text), problem) in enumerate(zip(completions, problems)):
        entry = problem["entry_point"]
        helper_code, main_code = extract_code(helper_text), extract_code(main_text)
        helper_defined = defines_function(helper_code, config.helper_name) or (
            config.helper_may_pass and not helper_code.strip()
        )
        defined = helper_defined and defines_function(main_code, entry)
        program = (
            combine_program(helper_code, main_code, entry, problem.get("prompt", ""), config.helper_name)
            if defined
            else None
        )
        usage = helper_usage(main_code, entry, config.helper_name) if program else "absent"
        scores.append(CodingScore(defined, program is not None, 0, 0, usage, 0.0))
        if program is not None:
            job_of[k] = len(jobs)
            jobs.append(
                {"code": program, "tests": problem["test"], "entry_point": entry, "count_calls": config.helper_name}
            )
    runs = run_tests_many(jobs, limits=limits) if jobs else []
    for k, score in enumerate(scores):
        if k in job_of:
            run = runs[job_of[k]]
            score.run, score.tests_passed, score.tests_total = run, run.passed, run.total
            if not score.helper_ran:  # never returned: dead code, a shadowing name, or a call that raised
                score.helper_usage = "absent"
            elif (
                score.helper_usage == "absent"
            ):  # reached in a way the syntax does not show (another of agent 1's functions)
                score.helper_usage = "used"
    decide_helper_use_by_counterfactual(scores, jobs, job_of, config.helper_name, limits)
    for score in scores:
        score.reward = level_reward(score, config)
    return scores


def decide_helper_use_by_counterfactual(
    scores: Sequence["CodingScore"],
    jobs: Sequence[dict[str, Any]],
    job_of: dict[int, int],
    helper_name: str,
    limits: SandboxLimits | None,
) -> None:
    """Where a program passed a test and its helper ran, run its tests once more with the helper
    replaced by a stub that returns None: the helper is "used" when a test that passed fails
    without it (its work reaches a result the tests check), else "ignored" (whatever the syntax
    says: a call whose value is discarded on the way, ``aux() or 0``, changes nothing). Only
    these programs pay for the second run (``figures()["helper_counterfactual"]``)."""
    checked = [k for k, score in enumerate(scores) if k in job_of and score.tests_passed > 0 and score.helper_ran]
    stub = f"\n\ndef {helper_name}(*args, **kwargs):\n    return None\n"
    stubbed = [{**jobs[job_of[k]], "code": jobs[job_of[k]]["code"] + stub, "count_calls": None} for k in checked]
    for k, run in zip(checked, run_tests_many(stubbed, limits=limits) if stubbed else []):
        passed_with = [o.status == "passed" for o in scores[k].run.outcomes]
        passed_without = [o.status == "passed" for o in run.outcomes]
        needed = any(w and not wo for w, wo in zip(passed_with, passed_without))
        scores[k].helper_usage = "used" if needed else "ignored"
        scores[k].counterfactual = True


def level_reward(score: CodingScore, config: CodingRewardConfig) -> float:
    reward = 0.0
    if not score.defined:
        return reward
    reward += config.defined
    if not score.parses:
        return reward
    reward += config.parses
    if score.tests_passed == 0:
        return reward
    reward += config.tests * score.fraction
    if score.helper_usage == "used":
        reward += config.cooperation_bonus
    elif score.helper_usage == "ignored":
        reward -= config.ignored_helper_penalty
    return reward
