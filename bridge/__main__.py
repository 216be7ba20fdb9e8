"""`python -m bridge` is the `sms-bridge` command."""

from bridge.cli import main

raise SystemExit(main())
