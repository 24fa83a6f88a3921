"""``python -m mil.predict``: see :mod:`mil.train.predict` (the command is :data:`mil.train.cli.PREDICT`)."""

from mil.train.cli import predict_main as main

if __name__ == "__main__":
    raise SystemExit(main())
