"""``python -m cnhelpers.train`` (or ``accelerate launch -m cnhelpers.train``): train a ControlNet.

The flags are those of diffusers' examples/controlnet/train_controlnet.py, plus ``--snr_gamma`` and
``--cache``; see ``--help`` (:mod:`cnhelpers.config`). Bad input ends with one line naming the problem and
the fix, and exit status 2.
"""

from __future__ import annotations

import sys

from .config import parse_args
from .hub import HubUnavailableError
from .training import train


def main(argv=None) -> int:
    """Parse the flags, train, and turn the errors a user can fix into one line on stderr."""
    try:
        result = train(parse_args(argv))
    except (ValueError, FileNotFoundError, HubUnavailableError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if result.is_main_process:
        print(f"Trained {result.global_step} steps; ControlNet saved in {result.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
