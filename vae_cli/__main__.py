"""`python -m vae_cli` is the `vae` command."""

import sys

from vae_cli import main

sys.exit(main())
