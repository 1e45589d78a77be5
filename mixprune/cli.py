"""The `mixprune` command line: one thin command per stage, plus `run` for all of them.

Commands parse and validate flags, then call the stage; nothing imports this module.
Any MixpruneError ends the command with one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys

import click

from .errors import MixpruneError


class MixpruneGroup(click.Group):
    """Turns mixprune's own errors into one clear line and exit code 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MixpruneError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("Interrupted; finished work is kept, continue with --resume.", err=True)
            ctx.exit(130)


@click.group(cls=MixpruneGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mixprune")
def main():
    """Compress a vision model for an edge device and ship the best variant.

    \b
    Typical flow (each stage reads and writes one run directory):
      mixprune prune  --model resnet18 --data digits --out runs/demo
      mixprune export runs/demo
      mixprune bench  runs/demo --device host
    """


# --- models ---------------------------------------------------------------------------
@main.group()
def models():
    """Look up timm model names."""


@models.command("list")
@click.argument("pattern", required=False)
def models_list(pattern):
    """List timm model names matching PATTERN (shell wildcards, e.g. 'resnet*')."""
    from .models import list_models

    names = list_models(pattern if pattern and any(c in pattern for c in "*?[") else (f"*{pattern}*" if pattern else None))
    if not names:
        raise MixpruneError(f"no timm model matches '{pattern}'; try a wildcard such as 'resnet*'")
    click.echo("\n".join(names))


# --- prune ----------------------------------------------------------------------------


# --- export ---------------------------------------------------------------------------


# --- devices and bench ----------------------------------------------------------------


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
