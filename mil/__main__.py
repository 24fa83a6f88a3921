"""``python -m mil STAGE ...``: the same as the ``cellmil`` console script."""

from mil.cli import main

raise SystemExit(main())
