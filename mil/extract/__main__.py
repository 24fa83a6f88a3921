from mil.extract.cli import main

raise SystemExit(main())
