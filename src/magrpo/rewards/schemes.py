"""How a coding team cooperates: the scheme by which the entry point uses the helper, read from
the main agent's syntax tree (the paper reports these schemes emerging with training).

- ``fallback``: the helper is called only on a failure or edge path (inside ``except``, or in a
  branch's body) while another ``return`` does the work without it (not a constant or an empty
  literal: under ``if xs: return aux(xs)`` / ``return []`` the helper does the work);
- ``strategy_filter``: the helper decides: it is called in a condition (``if``, ``elif``,
  ``while``, a conditional expression, a comprehension's ``if``, an ``assert``), or passed as
  ``filter``'s predicate or a ``key=``, validating, filtering or ordering;
- ``coordinator``: the main function splits the work over several helper uses (two or more, a
  call run once per iteration of a loop or comprehension, or ``map(aux, xs)``; a loop's
  iterable is evaluated once and is not a loop use);
- ``decorator``: the helper post-processes or wraps what the main function computed (a call's
  arguments use values computed in the entry point, not only its parameters);
- ``delegation``: the main function hands its inputs to the helper and returns its result;
- ``ignored``: the helper is called but its result is thrown away or never reaches the return;
- ``none``: no call of agent 1's helper (none written, the main agent's own ``aux``, or code
  that does not parse).

The first that applies, in this order, names the scheme.
"""

from __future__ import annotations

import ast

from magrpo.rewards.coding import _binds_locally, _parse, calls_of, helper_usage, top_level_function

SCHEMES = ("fallback", "strategy_filter", "coordinator", "decorator", "delegation", "ignored", "none")


def cooperation_scheme(main_code: str, entry_point: str, helper_name: str = "aux", *, usage: str | None = None) -> str:
    """The scheme of :data:`SCHEMES` by which ``entry_point`` in ``main_code`` uses the helper.
    ``usage``: :func:`magrpo.rewards.coding.helper_usage` as the reward decided it (after the
    sandbox counted the helper's calls); read from the code when None."""
    usage = helper_usage(main_code, entry_point, helper_name) if usage is None else usage
    func = top_level_function(_parse(main_code), entry_point)
    if usage == "absent" or func is None or _binds_locally(func, helper_name):
        return "none"
    if usage == "ignored":
        return "ignored"
    parents = {child: parent for parent in ast.walk(func) for child in ast.iter_child_nodes(parent)}
    calls = calls_of(func, helper_name)
    # the helper passed by name to another function: map(aux, xs), filter(aux, xs), key=aux
    by_name = [
        n
        for n in ast.walk(func)
        if isinstance(n, ast.Name)
        and n.id == helper_name
        and isinstance(n.ctx, ast.Load)
        and not (isinstance(parents.get(n), ast.Call) and parents[n].func is n)
    ]
    uses = [*calls, *by_name]

    def ancestors(node: ast.AST):
        while node in parents:
            child, node = node, parents[node]
            yield child, node

    def in_condition(use: ast.AST) -> bool:
        for child, parent in ancestors(use):
            if isinstance(parent, (ast.If, ast.While, ast.IfExp, ast.Assert)) and child is parent.test:
                return True
            if isinstance(parent, ast.comprehension) and child in parent.ifs:
                return True
        return False

    def on_fallback_path(use: ast.AST) -> bool:
        # in an except handler, or in a branch (not the condition: an elif's test decides)
        return not in_condition(use) and any(
            isinstance(p, ast.ExceptHandler) or (isinstance(p, ast.If) and c is not p.test) for c, p in ancestors(use)
        )

    def in_loop(use: ast.AST) -> bool:
        """Run once per iteration: in a loop's body or a comprehension's element, not in the
        iterable a loop (or a comprehension's first generator) evaluates once."""
        for child, parent in ancestors(use):
            if isinstance(parent, (ast.For, ast.AsyncFor, ast.While)) and (
                child in parent.body or child in parent.orelse
            ):
                return True
            if isinstance(parent, (ast.ListComp, ast.SetComp, ast.GeneratorExp)) and child is parent.elt:
                return True
            if isinstance(parent, ast.DictComp) and child in (parent.key, parent.value):
                return True
            if isinstance(parent, ast.comprehension) and child is parent.iter:
                comp = parents[parent]
                if comp.generators.index(parent) > 0:  # an inner generator's iterable: once per outer item
                    return True
        return False

    def by_name_scheme(name: ast.Name) -> str:
        call = parents.get(name)
        if isinstance(call, ast.keyword) and call.arg == "key":
            return "strategy_filter"  # sorted(xs, key=aux), max(xs, key=aux): the helper decides
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Name):
            if call.func.id == "filter":
                return "strategy_filter"
            if call.func.id == "map":
                return "coordinator"  # the helper applied to every item
        return "delegation"

    returns = [n for n in ast.walk(func) if isinstance(n, ast.Return) and n.value is not None]
    returns_without_helper = [r for r in returns if not any(u in uses for u in ast.walk(r))]
    # the path without the helper does the work (not a constant or an empty literal: `return []`)
    if all(on_fallback_path(u) for u in uses) and any(not _trivial(r.value) for r in returns_without_helper):
        return "fallback"
    if any(in_condition(u) for u in uses) or any(by_name_scheme(n) == "strategy_filter" for n in by_name):
        return "strategy_filter"
    if len(uses) >= 2 or any(in_loop(u) for u in uses) or any(by_name_scheme(n) == "coordinator" for n in by_name):
        return "coordinator"
    if by_name:
        return "delegation"
    parameters = {a.arg for a in ast.walk(func.args) if isinstance(a, ast.arg)}
    for call in calls:
        for arg in [*call.args, *(k.value for k in call.keywords)]:
            names = {n.id for n in ast.walk(arg) if isinstance(n, ast.Name)}
            plain = isinstance(arg, (ast.Name, ast.Constant, ast.Starred)) or (
                isinstance(arg, (ast.Attribute, ast.Subscript)) and names <= parameters
            )
            if not plain or names - parameters:
                return "decorator"  # the helper works on what the main function computed
    return "delegation"


def _trivial(value: ast.AST) -> bool:
    """A constant, or an empty list/tuple/dict/set literal: an edge case's answer, not the work."""
    if isinstance(value, ast.Constant):
        return True
    if isinstance(value, (ast.List, ast.Tuple, ast.Set)):
        return not value.elts
    if isinstance(value, ast.Dict):
        return not value.keys
    if isinstance(value, ast.UnaryOp) and isinstance(value.operand, ast.Constant):
        return True  # -1
    return False


def scheme_figures(scheme: str) -> dict[str, float]:
    """One 0/1 figure per scheme (``scheme/fallback``, ...): averaged over answers, the fraction of each."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown cooperation scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")
    return {f"scheme/{name}": float(name == scheme) for name in SCHEMES}


__all__ = ["SCHEMES", "cooperation_scheme", "scheme_figures"]
