"""``python -m cnhelpers.make_dataset PICTURES OUTPUT``: a ControlNet data set from a folder of your own pictures.

Reads every picture PIL opens in PICTURES, subfolders included (``--no_recursive``: the folder alone), whatever its
size and mode (transparency composited on ``--background``, white by default); captions from ``metadata.jsonl``,
else ``.txt`` files beside the pictures, else the file names; squares of ``--resolution`` px (``--crop center``,
``pad`` or ``none``); the condition ``--condition`` (canny, softedge, scribble, grayscale, blur, lowres, or your own
``module:function``). Writes the imagefolder that ``python -m cnhelpers.train --train_data_dir OUTPUT`` and
diffusers' train_controlnet.py read, with ``contact_sheet.png`` (the first pairs) and ``skipped.txt`` (unreadable
files). :func:`make_dataset` is the same as a function. Bad input: one ``error: ...`` line, exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from .messages import one_line
from .own_data import BACKGROUNDS, CONDITIONS, CROP_MODES, BuiltDataset, build_own_dataset

CROP_WORDS = {"center": "scaled so the short side is {r} px, the centre {r}x{r} px kept",
              "pad": "scaled so the long side is {r} px, padded to {r}x{r} px with the background colour",
              "none": "scaled so the short side is {r} px, the shape kept (the trainer crops the centre)"}


def summary(built: BuiltDataset, input_dir) -> list[str]:
    """The lines the command prints about a data set it built."""
    where = "subfolders included" if built.recursive else "subfolders left out"
    lines = [f"read {built.rows + len(built.skipped)} pictures from {str(input_dir)} ({where})"]
    if built.skipped:
        lines.append(f"skipped {len(built.skipped)} unreadable pictures (listed in "
                     f"{str(built.output_dir / 'skipped.txt')}): {', '.join(f for f, _ in built.skipped[:3])}"
                     + (", ..." if len(built.skipped) > 3 else ""))
    lines.append(f"captions: from {built.caption_source}; {len(built.uncaptioned)} pictures had none "
                 "(empty caption)" + (f": {', '.join(built.uncaptioned[:3])}" if built.uncaptioned else ""))
    lines.append(f"crop: {built.crop} ({CROP_WORDS[built.crop].format(r=built.resolution)}); transparency "
                 f"composited on {built.background}")
    lines.append(f"condition: {built.condition}")
    lines.append(f"wrote {built.rows} rows to {str(built.output_dir)} (images/, conditioning_images/, "
                 "metadata.jsonl)")
    if built.held_out_dir is not None:
        lines.append(f"held out {built.held_out} pictures (not in the training rows) in {str(built.held_out_dir)}; "
                     f"validate on them with the flags in {str(built.held_out_dir / 'validation_flags.txt')}")
    if built.contact_sheet is not None:
        lines.append(f"contact sheet: {str(built.contact_sheet)}")
    lines.append(f"train on it: python -m cnhelpers.train --train_data_dir {str(built.output_dir)} "
                 f"--resolution {built.resolution} ...")
    return lines


def make_dataset(input_dir, output_dir, condition="canny", *, resolution: int = 512, crop: str = "center",
                 background: str = "white", recursive: bool = True, overwrite: bool = False,
                 contact_pairs: int = 4, hold_out: int = 0, quiet: bool = False) -> BuiltDataset:
    """The command as a function (:func:`cnhelpers.own_data.build_own_dataset`), printing its summary unless
    ``quiet``."""
    built = build_own_dataset(input_dir, output_dir, condition, resolution=resolution, crop=crop,
                              background=background, recursive=recursive, overwrite=overwrite,
                              contact_pairs=contact_pairs, hold_out=hold_out)
    if not quiet:
        print("\n".join(summary(built, input_dir)))
    return built


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        """The usage, then one last line ``error: ...`` (as every refusal of the course's commands)."""
        self.print_usage(sys.stderr)
        self.exit(2, f"error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m cnhelpers.make_dataset",
                description="A ControlNet data set (an imagefolder) from a folder of your own pictures.")
    p.add_argument("input_dir", help="the folder of your pictures (any format PIL reads)")
    p.add_argument("output_dir", help="where to write the data set (refused if it exists and is not empty)")
    p.add_argument("--condition", default="canny",
                   help=f"{', '.join(CONDITIONS)}, or module:function (or path/to/file.py:function) for your own, "
                        "a function PIL.Image -> PIL.Image of the same size (default: canny)")
    p.add_argument("--resolution", type=int, default=512, help="side of the square pictures, in px (default 512)")
    p.add_argument("--crop", choices=CROP_MODES, default="center",
                   help="center: the centre square (default); pad: the whole picture, padded to a square; none: "
                        "scaled only (the trainer crops the centre)")
    p.add_argument("--background", choices=tuple(BACKGROUNDS), default="white",
                   help="the colour transparent pixels (and --crop pad's borders) become (default white)")
    p.add_argument("--no_recursive", dest="recursive", action="store_false",
                   help="read the folder alone, not its subfolders")
    p.add_argument("--overwrite", action="store_true", help="replace an output folder that is not empty")
    p.add_argument("--contact_pairs", type=int, default=4, help="pairs shown in contact_sheet.png (default 4)")
    p.add_argument("--hold_out", type=int, default=0, metavar="N",
                   help="keep N pictures, spread over the folder, out of training: written beside the data set "
                        "(OUTPUT-held-out/) with the --validation_image/--validation_prompt flags that validate on "
                        "them (default 0)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        make_dataset(args.input_dir, args.output_dir, args.condition, resolution=args.resolution, crop=args.crop,
                     background=args.background, recursive=args.recursive, overwrite=args.overwrite,
                     contact_pairs=args.contact_pairs, hold_out=args.hold_out)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {one_line(str(error))}", file=sys.stderr)
        return 2
    except OSError as error:  # a full disk, an output folder that cannot be written
        print(f"error: {one_line(str(error))}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
