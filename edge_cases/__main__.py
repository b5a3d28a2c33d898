from __future__ import annotations

from edge_cases.cli import main

raise SystemExit(main())
