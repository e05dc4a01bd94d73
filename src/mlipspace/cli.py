"""The ``mlipspace`` command line: thin wrappers that parse, call the library and print.

User errors (:class:`mlipspace.errors.MlipspaceError`) are printed as one red line on stderr with
exit status 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys

from mlipspace.commands import (  # noqa: F401  (imported to register their commands)
    cumulants,
    data,
    envs,
    metrics,
    models,
    store,
    study,
)
from mlipspace.commands.apps import app
from mlipspace.errors import MlipspaceError


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``mlipspace`` console script."""
    try:
        app(args=argv, standalone_mode=True)
    except MlipspaceError as exc:
        from rich.console import Console

        Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
