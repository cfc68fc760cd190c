"""`python -m kubetune_trainer`: the trainer pod's command."""

import os

from kubetune_trainer.loaders import without_loaders

# before anything imports ssl, hashlib or torch: no variable that loads code stays in this process or its children
for _name in set(os.environ) - set(without_loaders(os.environ)):
    del os.environ[_name]

from kubetune_trainer import quick_exit  # noqa: E402
from kubetune_trainer.launch import main  # noqa: E402
from kubetune_trainer.streams import guarded  # noqa: E402

quick_exit.run(lambda: guarded(main))
