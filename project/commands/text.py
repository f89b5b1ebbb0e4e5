"""What the commands print and how they exit: numbers for people, JSON without NaN, one-paragraph errors."""
import math
import sys
import textwrap

from project.rundirs.reading import plain  # noqa: F401  (library: JSON files written outside the commands too)


def fail(error: Exception) -> int:
    """One paragraph on stderr, no traceback; the tools exit with this status (2, as run.py does)."""
    print(textwrap.fill(f"Error: {error}", width=110, break_long_words=False, break_on_hyphens=False),
          file=sys.stderr)
    return 2


def fmt(value, digits=4) -> str:
    """Numbers for people: 4 decimals, small values in scientific notation, missing as '-'."""
    if value is None or isinstance(value, float) and math.isnan(value):
        return "-"
    if isinstance(value, float):
        return f"{value:.2e}" if value and abs(value) < 1e-3 else f"{value:.{digits}f}"
    return str(value)


def fmt_value(value) -> str:
    """Config values as typed (0.2, 0.0003, 1e-05), not rounded."""
    return f"{value:g}" if isinstance(value, float) else "-" if value is None else str(value)


BUILDS = ("build the file's model with the classes its config names, even where this installation would use others "
          "(docs/trust.md); the log names them")
READS = "show a file whose config names code this installation would not run (docs/trust.md); nothing is built"


def trust_flag(parser, help_text: str = BUILDS) -> None:
    """--trust-config, the one opt-in of every command that opens a file (project/checkpoints/trust.py)."""
    parser.add_argument("--trust-config", action="store_true", help=help_text)


def trusting(args):
    """The block in which a command opens files: their own targets accepted (logged) with --trust-config."""
    from project.checkpoints import trust

    return trust.accepting("warn" if args.trust_config else None)
