"""Mutants of HumanEval's canonical solutions: each changes one token of the solution (an
operator, a comparison, a boolean, an integer), as a mutation tester would, or returns None."""

from __future__ import annotations

import io
import tokenize

#: what each mutated token becomes
SWAPS = {
    "+": "-",
    "-": "+",
    "<": "<=",
    "<=": "<",
    ">": ">=",
    ">=": ">",
    "==": "!=",
    "!=": "==",
    "and": "or",
    "or": "and",
    "True": "False",
    "False": "True",
}


def mutants(solution: str, count: int = 3) -> list[str]:
    """Up to ``count`` one-token mutants of ``solution`` (a function body), the first sites in
    reading order, and one that returns None."""
    lines = solution.splitlines(keepends=True)
    found = []
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(solution).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        tokens = []
    for token in tokens:
        if len(found) == count:
            break
        if token.type == tokenize.NUMBER and token.string.isdigit():
            new = str(int(token.string) + 1)
        elif token.string in SWAPS and token.type in (tokenize.OP, tokenize.NAME):
            new = SWAPS[token.string]
        else:
            continue
        (row, col), (end_row, end_col) = token.start, token.end
        if row != end_row:
            continue
        line = lines[row - 1]
        mutated = lines[: row - 1] + [line[:col] + new + line[end_col:]] + lines[row:]
        found.append("".join(mutated))
    return [*found, "    return None\n"]
