class UserError(Exception):
    """Bad input whose message names the fix: reported as one line, without a traceback."""
