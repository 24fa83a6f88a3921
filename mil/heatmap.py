"""``python -m mil.heatmap``: see :mod:`mil.explain` (the command is :data:`mil.explain.cli.COMMAND`)."""

from mil.explain.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
