import functools
import os
import sys


class UserError(Exception):
    """Bad input whose message names the fix: reported as one line, without a traceback."""


def exit_on_user_error(main):
    """Turn a UserError into one line on stderr and exit status 2; HYDRA_FULL_ERROR=1 keeps the traceback."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as e:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    return wrapper
