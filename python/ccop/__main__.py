"""`python -m ccop` runs the same command line as `ccop`."""

from ccop.cli import main

raise SystemExit(main())
