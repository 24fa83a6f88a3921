from mil.review.cli import main

raise SystemExit(main())
