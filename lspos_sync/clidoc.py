"""Renders the command-line reference (docs/cli.md) from the click commands themselves, so it cannot drift.

Regenerate with `python -m lspos_sync.clidoc > docs/cli.md`; tests/test_docs.py fails when the file differs.
"""

from __future__ import annotations

import click

from lspos_sync.cli import main

PROGRAM = "lspos-sync"

# Contract §1: the exit codes every command keeps to.
EXIT_CODES = (
    ("0", "everything in the window was written (or, for dry-run, planned)"),
    ("1", "the run failed; the checkpoint did not move past anything unwritten"),
    ("2", "usage or configuration error (missing variable, bad date, unknown option)"),
    ("3", "the run finished but Salesforce rejected some records; they are kept locally and retried by later "
          "runs, and listed in the output"),
    ("4", "another run holds the lock; this one did nothing"),
)


def render() -> str:
    """The whole reference as Markdown: every command and sub-command, then the exit codes."""
    root = click.Context(main, info_name=PROGRAM)
    parts = [
        "# Command-line reference",
        "",
        "Generated from the click commands by `python -m lspos_sync.clidoc > docs/cli.md`; do not edit by hand.",
        "`tests/test_docs.py` fails when this file and the commands disagree.",
        "",
        "The options `--json`, `--env-file`, `--state`, `-v` and `--log-format` are accepted both before the "
        "command (`lspos-sync --json sync`) and after it (`lspos-sync sync --json`); given in both places, "
        "the command's own value wins. WHEN is ISO 8601 (`2026-03-01`, `2026-03-01T09:30:00`, "
        "`2026-03-01T09:30:00+01:00`, `...Z`); a value without an offset is UTC, and a date alone means its "
        "midnight UTC.",
        "",
    ]
    for context in _walk(root):
        parts.extend(_command(context))
    parts.extend(["## Exit codes", "", "| code | meaning |", "|---|---|"])
    parts.extend(f"| {code} | {meaning} |" for code, meaning in EXIT_CODES)
    parts.extend(["", "`status` uses 0 and 1 for monitoring: 1 when the last `sync` or `backfill` failed or was "
                  "killed, when the checkpoint is later than Lightspeed's clock, or when `--max-lag-minutes` is "
                  "given and the checkpoint is older than that (or not set yet).", ""])
    return "\n".join(parts)


def _walk(context: click.Context) -> list[click.Context]:
    """The command of `context` and, for a group, every sub-command below it, depth first, by name."""
    found = [context]
    command = context.command
    if isinstance(command, click.Group):
        for name in command.list_commands(context):
            child = command.get_command(context, name)
            if child is not None and not child.hidden:
                found.extend(_walk(click.Context(child, info_name=name, parent=context)))
    return found


def _command(context: click.Context) -> list[str]:
    command = context.command
    path = context.command_path
    usage = command.collect_usage_pieces(context)
    lines = [f"## `{path}`", "", "```", " ".join([path, *usage]), "```", ""]
    lines.extend([(command.help or "").strip(), ""])
    arguments = [p for p in command.get_params(context) if isinstance(p, click.Argument)]
    options = [p for p in command.get_params(context) if isinstance(p, click.Option)]
    if arguments:
        lines.extend(["| argument | required | values |", "|---|---|---|"])
        for argument in arguments:
            lines.append(f"| `{argument.make_metavar(context)}` | {'yes' if argument.required else 'no'} | "
                         f"{_argument_count(argument)} |")
        lines.append("")
    if options:
        lines.extend(["| option | type | default | meaning |", "|---|---|---|---|"])
        for option in options:
            lines.append(f"| {_names(option)} | {_type(option, context)} | {_default(option, context)} | "
                         f"{_cell(option.help or '')}{' (required)' if option.required else ''} |")
        lines.append("")
    return lines


def _names(option: click.Option) -> str:
    return ", ".join(f"`{name}`" for name in [*option.opts, *option.secondary_opts])


def _type(option: click.Option, context: click.Context) -> str:
    if option.count:
        return "count"
    if option.is_flag:
        return "flag"
    if option.metavar:
        return f"`{option.metavar}`"
    if isinstance(option.type, click.Choice):
        return " \\| ".join(f"`{choice}`" for choice in option.type.choices)
    if isinstance(option.type, click.types._NumberRangeBase):
        return f"`{option.type.name}` ({_cell(option.type._describe_range())})"
    return f"`{option.type.name}`"


def _default(option: click.Option, context: click.Context) -> str:
    default = option.get_default(context, call=False)
    if option.count:
        return f"`{default or 0}`"
    if default is None or default is False or callable(default) or type(default).__name__ == "Sentinel":
        return ""  # click marks "no default" with a sentinel object
    return f"`{default}`"


def _argument_count(argument: click.Argument) -> str:
    return "any number" if argument.nargs == -1 else str(argument.nargs)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


if __name__ == "__main__":
    click.echo(render(), nl=False)
