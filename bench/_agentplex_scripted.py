"""`agentplex serve` whose scripted model answers every plain prompt with N tokens at once.

    BENCH_SCRIPTED_TOKENS=200 python bench/_agentplex_scripted.py serve --port N ...

The scripted provider has a zero-latency N-token mode (``ScriptedProvider(tokens=N)``) but no
setting selects it (``AGENTPLEX_AGENT_SCRIPTED_MODEL=true`` builds ``ScriptedProvider()``), so
this launcher gives the class that default and then runs the real CLI: the server is exactly
`agentplex serve` otherwise. Used by bench/sessions.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder heads sys.path, and bench/http.py would shadow the
# standard library's `http` package for everything imported below.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

import os
from typing import Any

from agentplex.agent import scripted


def _patch(tokens: int) -> None:
    original = scripted.ScriptedProvider.__init__

    def init(self: scripted.ScriptedProvider, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("tokens", tokens)
        original(self, *args, **kwargs)

    scripted.ScriptedProvider.__init__ = init  # type: ignore[method-assign]


if __name__ == "__main__":
    _patch(int(os.environ.get("BENCH_SCRIPTED_TOKENS", "200")))
    from agentplex.cli import main

    sys.exit(main())
