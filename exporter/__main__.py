"""`python -m exporter` is the `pgparent` command."""

from __future__ import annotations

from exporter.cli.main import main

raise SystemExit(main())
