"""`python -m smartspec`: the same entry point as the `smartspec` console script."""

from smartspec.cli import main

raise SystemExit(main())
