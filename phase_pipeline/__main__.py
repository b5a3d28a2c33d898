from phase_pipeline.cli import main

raise SystemExit(main())
