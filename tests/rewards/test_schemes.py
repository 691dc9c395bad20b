"""The cooperation schemes, each on hand-written programs of its kind."""

from __future__ import annotations

import pytest

from magrpo.rewards.schemes import SCHEMES, cooperation_scheme

PROGRAMS = {
    "fallback": [
        "def f(xs):\n    try:\n        return sum(xs)\n    except TypeError:\n        return aux(xs)\n",
        "def f(xs):\n    if not xs:\n        return aux(xs)\n    return max(xs)\n",
    ],
    "strategy_filter": [
        "def f(xs):\n    return [x for x in xs if aux(x)]\n",
        # an elif's test decides as an if's does (it sits in the outer if's else branch)
        "def f(x):\n    if x > 10:\n        return 1\n    elif aux(x):\n        return 2\n    return 3\n",
        "def f(x):\n    if aux(x):\n        return 2\n    return 3\n",
        # the helper by name: filter's predicate, a sort key
        "def f(xs):\n    return list(filter(aux, xs))\n",
        "def f(xs):\n    return sorted(xs, key=aux)\n",
        "def f(s):\n    if aux(s):\n        return s.upper()\n    return s\n",
        "def f(x):\n    return x if aux(x) else -x\n",
    ],
    "coordinator": [
        "def f(a, b):\n    return aux(a) + aux(b)\n",
        "def f(xs):\n    return list(map(aux, xs))\n",
        "def f(xs):\n    out = []\n    for x in xs:\n        out.append(aux(x))\n    return out\n",
        "def f(words):\n    return ' '.join(aux(w) for w in words)\n",
    ],
    "decorator": [
        "def f(xs):\n    total = sum(xs)\n    return aux(total)\n",
        "def f(xs):\n    return aux(sorted(xs))\n",
    ],
    "delegation": [
        "def f(numbers, threshold):\n    return aux(numbers, threshold)\n",
        # the helper does the work; the other return is the empty input's answer, not a fallback
        "def f(xs):\n    if xs:\n        return aux(xs)\n    return []\n",
        # one call as a loop's iterable runs once: not a coordinator
        "def f(xs):\n    out = []\n    for x in aux(xs):\n        out.append(x)\n    return out\n",
        "def f(s):\n    result = aux(s)\n    return result\n",
        "def f(xs):\n    return aux(xs[0]) + 1\n",
    ],
    "ignored": [
        "def f(xs):\n    aux(xs)\n    return sum(xs)\n",
        "def f(xs):\n    unused = aux(xs)\n    return sum(xs)\n",
    ],
    "none": [
        "def f(xs):\n    return sum(xs)\n",
        "def f(xs):\n    def aux(v):\n        return v\n    return aux(xs)\n",  # the main agent's own aux
        "def f(xs:\n    return aux(xs)\n",  # does not parse
        "def g(xs):\n    return aux(xs)\n",  # no entry point
    ],
}


@pytest.mark.parametrize("scheme, code", [(s, c) for s, codes in PROGRAMS.items() for c in codes])
def test_each_program_is_classified_as_its_scheme(scheme, code):
    assert cooperation_scheme(code, "f") == scheme


def test_every_scheme_has_programs_and_the_reward_s_usage_decides_first():
    assert set(PROGRAMS) == set(SCHEMES)
    delegating = PROGRAMS["delegation"][0]
    assert (
        cooperation_scheme(delegating, "f", usage="absent") == "none"
    )  # e.g. the helper never returned in the sandbox
    assert cooperation_scheme(delegating, "f", usage="ignored") == "ignored"
