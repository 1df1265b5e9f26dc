"""``python -m aicp`` is the ``aicp`` command."""

from aicp.cli import main

raise SystemExit(main())
