from study_runner.cli import main

raise SystemExit(main())
