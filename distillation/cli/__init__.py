"""The ``rcig`` command line: settings resolved once (``RunSettings``) and the commands
(``_commands``)."""

from distillation.cli._commands import main

__all__ = ["main"]
