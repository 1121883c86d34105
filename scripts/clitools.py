"""Shared command-line plumbing of the scripts in this folder: argument errors and failures
as one line on stderr, the way nnprec reports its own (exit 2 for bad arguments, 1 for bad
files and failed commands), never a traceback.

    from clitools import ArgParser, die, why, positive_int, read_numeric_csv

A script sets PROG (its file name) at top level; die() prefixes its messages with it.
"""
import argparse
import csv
import os
import subprocess
import sys


def _prog():
    main = sys.modules.get("__main__")
    return getattr(main, "PROG", None) or os.path.basename(sys.argv[0])


class ArgParser(argparse.ArgumentParser):
    """argparse whose errors are one line (exit 2), like nnprec's own option errors."""

    def error(self, message):
        self.exit(2, "%s: error: %s\n" % (self.prog, message))


def die(msg):
    """A bad input file or a failed step: one 'PROG: error: ...' line on stderr, exit 1."""
    sys.exit("%s: error: %s" % (_prog(), " ".join(str(msg).split())))


def why(e):
    """An exception as one line: the command that failed and its last stderr line, or
    'FILE: No such file or directory' for an OSError."""
    if isinstance(e, subprocess.CalledProcessError):
        last = (e.stderr or "").strip().splitlines() if isinstance(e.stderr, str) else []
        return ("command failed (exit %d): %s" % (e.returncode, " ".join(map(str, e.cmd)))
                + (": " + last[-1] if last else ""))
    if isinstance(e, OSError) and e.strerror:
        return "%s: %s" % (e.filename, e.strerror) if e.filename else e.strerror
    return str(e) or type(e).__name__


def positive_int(s):
    """argparse type: an integer >= 1."""
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError("invalid int value: '%s'" % s) from None
    if v < 1:
        raise argparse.ArgumentTypeError("must be a positive integer, got %d" % v)
    return v


def add_bench_args(ap, root, ranks, rounds=3):
    """The options of every bench_*.py script: --nnprec (ROOT/build/nnprec), --rounds and
    --ranks, whose default `ranks` is an int (one rank count) or a list (several)."""
    ap.add_argument("--nnprec", default=os.path.join(root, "build", "nnprec"))
    ap.add_argument("--rounds", type=positive_int, default=rounds)
    if isinstance(ranks, list):
        ap.add_argument("--ranks", type=positive_int, nargs="+", default=ranks)
    else:
        ap.add_argument("--ranks", type=positive_int, default=ranks)


def parse_bench_args(ap):
    """parse_args, then exit 1 unless --nnprec is an executable."""
    a = ap.parse_args()
    if not os.access(a.nnprec, os.X_OK):
        die(f"{a.nnprec} is not an executable (build first)")
    return a


def read_numeric_csv(path, need=()):
    """A CSV of numbers (nnprec's train.csv, eval.csv) as a list of {column: float}.
    FileNotFoundError when it is missing; exit 1 when it cannot be read, a row is not all
    numbers, or the file has rows but lacks a column of `need`."""
    rows = []
    try:
        with open(path) as f:
            reader = csv.DictReader(f)
            for r in reader:
                try:
                    rows.append({k: float(v) for k, v in r.items()})
                except (TypeError, ValueError):  # a short or long row, or a non-number
                    die("%s, line %d: not a row of %d numbers"
                        % (path, reader.line_num, len(reader.fieldnames)))
            missing = [c for c in need if c not in (reader.fieldnames or [])]
    except FileNotFoundError:
        raise
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        die("%s: %s" % (path, e.strerror if isinstance(e, OSError) and e.strerror else e))
    if rows and missing:
        die("%s lacks the column(s) %s" % (path, ", ".join(missing)))
    return rows


def save_figure(fig, path, dpi, title=None):
    """Write a matplotlib figure (with an optional suptitle) to PATH, creating its folder;
    one-line error and exit 1 if it cannot be written."""
    if title:
        fig.suptitle(title)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fig.savefig(path, dpi=dpi)
    except OSError as e:
        die("cannot write %s (%s)" % (path, why(e)))
    print("wrote %s" % path)


def add_figure_args(ap):
    """--out PNG (required), --title and --dpi, for a script that writes one figure; check
    them with figure_args()."""
    ap.add_argument("--out", required=True, metavar="PNG", help="output image")
    ap.add_argument("--title", help="figure title (default: none)")
    ap.add_argument("--dpi", type=positive_int, default=110, help="resolution (default 110)")


def figure_args(ap, a, max_dpi=1000):
    """Exit 2 (through ap.error) for an --out that is not an image name or a --dpi above
    max_dpi (a figure of W x H inches is 1000 W x 1000 H pixels at most by default)."""
    image_path(ap, "--out", a.out)
    if a.dpi > max_dpi:
        ap.error("--dpi %d is too large (at most %d)" % (a.dpi, max_dpi))


def image_path(ap, opt, path, folder_must_exist=False):
    """Exit 2 (through ap.error) unless PATH ends in an image format matplotlib writes;
    exit 1 if PATH is a folder or, with folder_must_exist, if its folder is missing."""
    from matplotlib.backend_bases import FigureCanvasBase
    kinds = FigureCanvasBase.get_supported_filetypes()
    if not path:
        ap.error(f"{opt}: the file name is empty")
    if os.path.splitext(path)[1][1:].lower() not in kinds:
        ap.error(f"{opt}: '{path}' does not end in an image format matplotlib writes "
                 f"({', '.join(sorted(kinds))})")
    if os.path.isdir(path):
        die(f"{opt}: {path} is a directory")
    if folder_must_exist and not os.path.isdir(os.path.dirname(path) or "."):
        die(f"{opt}: {os.path.dirname(path)}: no such directory")
