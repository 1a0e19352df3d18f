from hybridps.cli import main

raise SystemExit(main())
