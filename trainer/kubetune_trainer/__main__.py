"""`python -m kubetune_trainer`: the trainer pod's command."""

import sys

from .launch import main

sys.exit(main())
