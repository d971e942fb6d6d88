import functools
import logging
import os
import sys


class UserError(Exception):
    """Bad input whose message names the fix: reported as one line, without a traceback."""


def exit_with(error: UserError):
    """One line on stderr and exit status 2, and no run folder left behind where nothing was done;
    HYDRA_FULL_ERROR=1 keeps the traceback."""
    from draw.app import remove_untouched_run_folders  # here: draw.app imports this module

    remove_untouched_run_folders()
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise error
    print(f"error: {error}", file=sys.stderr)
    # Into the run's log file too (Hydra's file handler), without a second line on the terminal.
    record = logging.LogRecord("draw", logging.ERROR, __file__, 0, f"error: {error}", None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
    sys.exit(2)


def exit_with_help_if_asked(argv, doc: str) -> None:
    """-h or --help among a module script's arguments: its docstring (what it does, how to call it) and exit 0,
    rather than reading the flag as an override, a folder or a file."""
    if {"-h", "--help"} & set(argv):
        print(doc.strip())
        sys.exit(0)


def exit_on_user_error(main):
    """Wrap a script's main so that a UserError ends it with exit_with."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as e:
            exit_with(e)

    return wrapper
