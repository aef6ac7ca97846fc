"""The exit codes every ``faceveil`` command returns, its one error line, and its parser class.

========  =====================================================================================
code      meaning
========  =====================================================================================
0         done
1         refused or failed: one ``error: ...`` line on stderr says why (also a check that
          found a problem: ``audit faces`` found a face, ``lookup`` a source not in the job)
2         usage error: a flag or argument is wrong (argparse prints the usage)
========  =====================================================================================
"""

from __future__ import annotations

import argparse
import copy
import sys
from enum import IntEnum
from typing import NoReturn


class ExitCode(IntEnum):
    """What a ``faceveil`` command returns (see the module's table)."""

    OK = 0
    REFUSED = 1
    USAGE = 2


EXIT_CODES_EPILOG = (
    "exit codes: 0 done; 1 refused or failed (one 'error: ...' line on stderr says why); "
    "2 usage error (a wrong flag or argument)"
)


def refused(exc: BaseException | str) -> ExitCode:
    """Print ``error: EXC`` on stderr (the one error format); returns ``ExitCode.REFUSED``."""
    print(f"error: {exc}", file=sys.stderr)
    return ExitCode.REFUSED


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Shows ``(default: X)`` after every option that takes a value and has a default, unless
    its help already says what the default is (also for options given no help text)."""

    def _format_action(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            action.option_strings
            and action.nargs != 0
            and default is not None
            and default is not argparse.SUPPRESS
            and default not in ([], ())
            and "default" not in text.lower()
        ):
            action = copy.copy(action)
            action.help = f"{text} (default: %(default)s)".strip()
        return super()._format_action(action)


class FaceveilParser(argparse.ArgumentParser):
    """An ArgumentParser whose help shows every default and ends with the exit codes; the
    subcommand parsers made from it (``add_subparsers``) are of this class too."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        kwargs.setdefault("epilog", EXIT_CODES_EPILOG)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        """The usage, then the one error line; exit ``ExitCode.USAGE``."""
        self.print_usage(sys.stderr)
        self.exit(ExitCode.USAGE, f"error: {self.prog}: {message}\n")
