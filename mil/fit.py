"""``python -m mil.fit``: see :mod:`mil.train.crossval` (the command is :data:`mil.train.cli.FIT`)."""

from mil.train.cli import fit_main as main

if __name__ == "__main__":
    raise SystemExit(main())
