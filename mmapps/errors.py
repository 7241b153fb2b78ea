"""User-facing errors: anything the user can fix (bad file, bad option) is a UserError.

The CLI turns a UserError into one ``error: ...`` line on stderr and exit code 2; every other
exception is a bug and keeps its traceback (exit 1).
"""


class UserError(Exception):
    """Bad input or usage. The message names the file or parameter and what is wrong."""


def suggest(name: str, choices) -> str:
    """' (did you mean 'x'?)' for the closest valid choice, or ''."""
    import difflib

    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def check_choice(param: str, value, choices) -> None:
    """Raise UserError naming the parameter, the allowed values and what was given."""
    choices = list(choices)
    if value not in choices:
        raise UserError(
            f"{param} must be one of {', '.join(map(str, choices))}; got {value!r}{suggest(value, choices)}"
        )


class ModelError(UserError):
    """The model produced something unusable (NaN, inf) for this input: a damaged checkpoint or input."""
