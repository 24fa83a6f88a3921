from mil.synth.cli import main

raise SystemExit(main())
