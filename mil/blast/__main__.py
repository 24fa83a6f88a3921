from mil.blast.cli import main

raise SystemExit(main())
