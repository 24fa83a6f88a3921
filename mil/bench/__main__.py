from mil.bench.cli import main

raise SystemExit(main())
