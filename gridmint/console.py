"""Rich consoles made on first use.

The command modules keep module-level `console` / `err` objects, but importing rich.console costs
the edge agent's process about 2 MiB it never needs while it runs (benchmarks/RESULTS.md, "Edge
agent footprint"), so each is a stand-in that creates its Console on its first attribute access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from rich.console import Console


class _LazyConsole:
    """Forwards attribute access to the Console it creates when first used. Special methods are
    looked up on the type, not through __getattr__, so `with console:` (rich's Live and
    Progress use it) is forwarded explicitly."""

    def __init__(self, **options: Any):
        self._options = options
        self._console: Console | None = None

    def _real(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real(), name)

    def __enter__(self) -> Console:
        return self._real().__enter__()

    def __exit__(self, *exc: object) -> None:
        self._real().__exit__(*exc)


def lazy_console(**options: Any) -> Console:
    """A Console(**options) that imports rich and is created when first used."""
    return cast("Console", _LazyConsole(**options))
