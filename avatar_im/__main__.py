"""``python -m avatar_im``: the ``avatar-im`` command."""

import sys

from .cli import main

sys.exit(main())
