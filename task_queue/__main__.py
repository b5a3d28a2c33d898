from task_queue.cli import main

raise SystemExit(main())
