"""Runs the command line: ``python -m flatscope``."""

from flatscope.cli import main

raise SystemExit(main())
