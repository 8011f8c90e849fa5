"""The ``cir`` command. Each module of this package contributes ``COMMANDS`` to the group."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import click

from cir import __version__
from cir.errors import CirError
from cir.index.ids import printable
from cir.redaction import redact


class _CirGroup(click.Group):
    """A group that turns user errors (``CirError``) into one clear line, never a traceback.

    The line is redacted (no credential is printed) and printable (file names that are not
    valid UTF-8 show their odd bytes as ``\\xNN``).
    """

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except CirError as exc:
            raise click.ClickException(printable(redact(str(exc)))) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=_CirGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cir")
def cli() -> None:
    """Training-free composed image retrieval: build an index, run pipelines, benchmark."""


def _register_commands() -> None:
    for module in pkgutil.iter_modules(__path__):
        if module.name.startswith("_"):
            continue
        loaded = importlib.import_module(f"{__name__}.{module.name}")
        for command in getattr(loaded, "COMMANDS", []):
            cli.add_command(command)


_register_commands()


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="cir")
