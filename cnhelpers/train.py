"""``python -m cnhelpers.train`` (or ``accelerate launch -m cnhelpers.train``): train a ControlNet.

The flags are those of diffusers' examples/controlnet/train_controlnet.py, plus ``--snr_gamma`` and
``--cache``; see ``--help``.
"""

import sys

from cnhelpers.cli import main

if __name__ == "__main__":
    sys.exit(main())
