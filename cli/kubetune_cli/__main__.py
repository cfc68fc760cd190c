"""`python -m kubetune_cli`."""

from kubetune_trainer import quick_exit

from .main import main

quick_exit.run(main)
