"""Errors that name a user's mistake and its fix: ``main.py``, ``data_prep`` and ``ssv-jax``
print their message and exit with status 2, without a traceback."""


class UserError(Exception):
    """Bad input (a flag, a config value, a file, a dataset, a workdir) that the user can fix;
    the message says what is wrong and how to fix it."""
