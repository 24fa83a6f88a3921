from mil.store.cli import main

raise SystemExit(main())
