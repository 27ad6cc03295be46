"""``python -m cnhelpers.train`` (or ``accelerate launch -m cnhelpers.train``): train a ControlNet.

The flags are those of diffusers' examples/controlnet/train_controlnet.py, plus ``--snr_gamma``,
``--cache`` and ``--skip_bad_images``; see ``--help`` (:mod:`cnhelpers.config`). Bad input ends with one line
``error: ...`` naming the problem and the fix, and exit status 2 (a full disk too); SIGTERM and SIGINT end
with one such line and 143 or 130, after any checkpoint being written is complete. The package's own
warnings (a corrupt checkpoint skipped, images left out) are one ``warning: ...`` line each.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

from .checkpoints import DISK_FULL
from .config import parse_args
from .hub import HubUnavailableError
from .messages import one_line
from .training import Terminated, train

PACKAGE = Path(__file__).resolve().parent


def _show_warning(message, category, filename, lineno, file=None, line=None, _default=warnings.showwarning):
    """cnhelpers' warnings as ``warning: ...`` (they are written for the user); others as Python shows them."""
    if Path(filename).resolve().parent == PACKAGE:
        print(f"warning: {one_line(str(message))}", file=sys.stderr if file is None else file)
    else:
        _default(message, category, filename, lineno, file, line)


def main(argv=None) -> int:
    """Parse the flags, train, and turn the errors a user can fix into one line on stderr."""
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning  # restored when the block ends
        try:
            result = train(parse_args(argv))
        except (ValueError, FileNotFoundError, HubUnavailableError) as error:
            print(f"error: {one_line(str(error))}", file=sys.stderr)
            return 2
        except OSError as error:
            if error.errno not in DISK_FULL:
                raise  # not a problem the user is told how to fix: the traceback is the report
            where = f" ({error.filename})" if error.filename else ""
            print(f"error: {one_line(error.strerror or 'No space left on device')}{where}: free space, or set "
                  "--output_dir on another disk, then resume with --resume_from_checkpoint latest.", file=sys.stderr)
            return 2
        except Terminated as stop:
            print(f"error: {stop}", file=sys.stderr)
            return 128 + stop.signum
        except KeyboardInterrupt:
            print("error: interrupted (Ctrl-C) before training began; nothing was trained.", file=sys.stderr)
            return 130
    if result.is_main_process:
        print(f"Trained {result.global_step} steps; ControlNet saved in {result.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
