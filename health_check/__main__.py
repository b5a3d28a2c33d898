from health_check.cli import main

raise SystemExit(main())
