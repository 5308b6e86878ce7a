from __future__ import annotations

from streams.cli.main import main

raise SystemExit(main())
