"""Loaded by schemathesis before the run (SCHEMATHESIS_HOOKS, set by
scripts/check-openapi).

One work-around, for the interpreter, not for the API: CPython 3.11's
`ast.parse` can raise `SystemError: AST constructor recursion depth
mismatch` when it is called deep in a stack (CPython issue gh-106905).
Hypothesis calls it only to print a readable name for a filter function
(`repr` of a strategy), and a run on this machine's Python 3.11 once
failed there instead of testing an operation. The name falls back to
Hypothesis's own "unknown" spelling; what is generated and checked does
not change.
"""

from hypothesis.internal import lambda_sources

_describe = lambda_sources._lambda_description


def _describe_or_unknown(f, *args, **kwargs):
    try:
        return _describe(f, *args, **kwargs)
    except SystemError:
        return "lambda: <unknown>"


lambda_sources._lambda_description = _describe_or_unknown
