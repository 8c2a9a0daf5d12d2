"""Shell completion scripts (bash, zsh, fish), generated from the argument parser.

Generated rather than written by hand so that a new command or flag is completed the day it is
added. The parser is read once into a small neutral description (commands, their options, what
kind of value each option and positional takes), which each shell's writer turns into a script.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
from collections.abc import Callable

from ..config import FIELD_BY_NAME

SHELLS = ("bash", "zsh", "fish")


@dataclasses.dataclass(frozen=True)
class Arg:
    """An option (``flags`` set) or a positional (``flags`` empty) and the value it takes.

    ``kind`` is ``""`` (nothing to complete), ``"dir"``, ``"file"`` or ``"flag"`` (no value);
    ``choices`` lists the values when there is a fixed set.
    """

    flags: tuple[str, ...]
    name: str
    help: str
    kind: str
    choices: tuple[str, ...] = ()
    repeats: bool = False
    optional: bool = False


@dataclasses.dataclass(frozen=True)
class Command:
    name: str
    help: str
    options: tuple[Arg, ...]
    positionals: tuple[Arg, ...]


# -- reading the parser ---------------------------------------------------------------------


def _field_choices(dest: str) -> tuple[str, ...]:
    """The fixed values of a config setting (``writeback``: sync, async), if it has them."""
    field = FIELD_BY_NAME.get(dest)
    if field is None or not inspect.isfunction(field.parse):
        return ()
    choices = inspect.getclosurevars(field.parse).nonlocals.get("choices")
    return tuple(str(c) for c in choices) if isinstance(choices, tuple) else ()


def _arg(action: argparse.Action) -> Arg:
    flags = tuple(action.option_strings)
    repeats = action.nargs in ("+", "*") or isinstance(action, argparse._AppendAction)
    optional = action.nargs in ("?", "*")
    help_text = " ".join((action.help or "").split()).replace("%%", "%")
    name = str(action.metavar or action.dest).upper()
    if flags and action.nargs == 0:
        return Arg(flags, name, help_text, "flag", repeats=repeats)
    choices = tuple(str(c) for c in action.choices or ()) or _field_choices(action.dest)
    kind = ""
    if "DIR" in name or "MOUNTPOINT" in name:
        kind = "dir"
    elif "FILE" in name or "PATH" in name:
        kind = "file"
    return Arg(flags, name, help_text, kind, choices, repeats, optional)


def _args(parser: argparse.ArgumentParser) -> tuple[tuple[Arg, ...], tuple[Arg, ...]]:
    actions = [a for a in parser._actions
               if a.help != argparse.SUPPRESS and not isinstance(a, argparse._SubParsersAction)]
    options = tuple(_arg(a) for a in actions if a.option_strings)
    positionals = tuple(_arg(a) for a in actions if not a.option_strings)
    return options, positionals


def describe(parser: argparse.ArgumentParser) -> tuple[Command, list[Command]]:
    """(the top level, its subcommands) as plain data."""
    top_options, _ = _args(parser)
    commands = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                options, positionals = _args(sub)
                commands.append(Command(name, sub.description or "", options, positionals))
    return Command(parser.prog, parser.description or "", top_options, ()), commands


# -- what every shell's writer shares -------------------------------------------------------


def _value_action(arg: Arg, choices: Callable[[str], str], kinds: dict[str, str]) -> str:
    """How one shell completes the value of ``arg``: its fixed choices (given to ``choices``
    as one blank-separated list) if it has them, else by kind (``kinds[""]``: nothing to
    offer). One rule for every shell, so bash, zsh and fish offer the same values."""
    if arg.choices:
        return choices(" ".join(arg.choices))
    return kinds.get(arg.kind, kinds[""])


# -- bash -----------------------------------------------------------------------------------


_BASH_FILES = 'compopt -o filenames 2>/dev/null; mapfile -t COMPREPLY < <(compgen -{} -- "$cur")'
_BASH_KINDS = {"dir": _BASH_FILES.format("d"), "file": _BASH_FILES.format("f"), "": "COMPREPLY=()"}


def _bash_complete_kind(arg: Arg) -> str:
    return _value_action(arg, lambda words: f'COMPREPLY=($(compgen -W "{words}" -- "$cur"))',
                         _BASH_KINDS)


def _bash_command_case(cmd: Command) -> list[str]:
    valued = [f for o in cmd.options if o.kind != "flag" for f in o.flags]
    lines = [f"        {cmd.name})",
             f'            opts="{" ".join(f for o in cmd.options for f in o.flags)}"',
             f'            vopts="{" ".join(valued)}"',
             '            case "$prev" in']
    by_action: dict[str, list[str]] = {}
    for option in cmd.options:
        if option.kind != "flag":
            by_action.setdefault(_bash_complete_kind(option), []).extend(option.flags)
    for action, flags in by_action.items():
        lines.append(f"                {'|'.join(flags)}) {action}; return ;;")
    lines.append("            esac")
    lines += _bash_positional_case(cmd)
    lines.append("            ;;")
    return lines


def _bash_positional_case(cmd: Command) -> list[str]:
    lines = ['            [[ $cur == -* ]] && { COMPREPLY=($(compgen -W "$opts" -- "$cur")); '
             "return; }",
             '            n=$(_cachefs_position "$vopts")',
             '            case "$n" in']
    for index, arg in enumerate(cmd.positionals):
        last = index == len(cmd.positionals) - 1
        pattern = f"{index}|*" if last and arg.repeats else str(index)
        lines.append(f"                {pattern}) {_bash_complete_kind(arg)} ;;")
    lines.append("            esac")
    return lines


def bash(top: Command, commands: list[Command]) -> str:
    names = " ".join(c.name for c in commands)
    top_flags = " ".join(f for o in top.options for f in o.flags)
    lines = [
        "# bash completion for cachefs; generated by `cachefs completion bash`.",
        "# Load it with: source <(cachefs completion bash)",
        "",
        "# The words of the line up to the cursor, split at blanks only (so s3://b/p and",
        "# --opt=value stay one word, unlike COMP_WORDS).",
        "_cachefs_words() {",
        '    local line=${COMP_LINE:0:COMP_POINT}',
        '    read -ra words <<< "$line"',
        '    [[ -z $line || $line == *[[:blank:]] ]] && words+=("")',
        "}",
        "",
        "# How many positionals come before the cursor, skipping options and their values.",
        "_cachefs_position() {",
        '    local vopts=" $1 " n=0 skip=0 i',
        '    for ((i = cmd_index + 1; i < ${#words[@]} - 1; i++)); do',
        "        if ((skip)); then skip=0; continue; fi",
        '        if [[ $vopts == *" ${words[i]} "* ]]; then skip=1',
        '        elif [[ ${words[i]} != -* ]]; then n=$((n + 1)); fi',
        "    done",
        '    echo "$n"',
        "}",
        "",
        "_cachefs() {",
        "    local words cur prev cmd='' cmd_index=0 opts vopts n i",
        "    _cachefs_words",
        '    cur=${words[-1]}',
        '    prev=${words[-2]:-}',
        "    for ((i = 1; i < ${#words[@]} - 1; i++)); do",
        '        if [[ ${words[i]} != -* ]]; then cmd=${words[i]}; cmd_index=$i; break; fi',
        "    done",
        '    case "$cmd" in',
        f'        "") COMPREPLY=($(compgen -W "{names} {top_flags}" -- "$cur")) ;;',
    ]
    for cmd in commands:
        lines += _bash_command_case(cmd)
    lines += ["    esac", "}", "", "complete -F _cachefs cachefs", ""]
    return "\n".join(lines)


# -- zsh ------------------------------------------------------------------------------------


def _zsh_quote(text: str) -> str:
    """Text for inside a single-quoted zsh word."""
    return text.replace("'", "'\\''")


def _zsh_description(text: str) -> str:
    """Text for the [description] of an _arguments spec, where brackets are syntax."""
    text = text.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")
    return _zsh_quote(text)


def _zsh_action(arg: Arg) -> str:
    return _value_action(arg, lambda words: f"({words})",
                         {"dir": "_files -/", "file": "_files", "": ""})


def _zsh_option(option: Arg) -> str:
    help_text = _zsh_description(option.help)
    star = "*" if option.repeats else ""
    value = ""
    if option.kind != "flag":
        value = f":{option.flags[-1].lstrip('-')}:{_zsh_action(option)}"
    if len(option.flags) > 1:
        exclusive = "(" + " ".join(option.flags) + ")"
        return f"'{star}{exclusive}'{{{','.join(option.flags)}}}'[{help_text}]{value}'"
    return f"'{star}{option.flags[0]}[{help_text}]{value}'"


def _zsh_positional(arg: Arg, last: bool) -> str:
    prefix = "*:" if last and arg.repeats else (":" if not arg.optional else "::")
    return f"'{prefix}{_zsh_quote(arg.name.replace(':', '-'))}:{_zsh_action(arg)}'"


def zsh(top: Command, commands: list[Command]) -> str:
    lines = [
        "#compdef cachefs",
        "# zsh completion for cachefs; generated by `cachefs completion zsh`.",
        "# Save it as _cachefs in a directory on $fpath, or: source <(cachefs completion zsh)",
        "",
        "_cachefs_commands() {",
        "    local -a commands",
        "    commands=(",
    ]
    lines += [f"        '{c.name}:{_zsh_quote(c.help)}'" for c in commands]
    lines += [
        "    )",
        "    _describe -t commands 'cachefs command' commands",
        "}",
        "",
        "_cachefs() {",
        "    local curcontext=$curcontext state line",
        "    _arguments -C \\",
        *[f"        {_zsh_option(o)} \\" for o in top.options],
        "        '1: :_cachefs_commands' \\",
        "        '*:: :->args'",
        "    [[ $state == args ]] || return",
        "    case $words[1] in",
    ]
    for cmd in commands:
        specs = [_zsh_option(o) for o in cmd.options]
        specs += [_zsh_positional(a, i == len(cmd.positionals) - 1)
                  for i, a in enumerate(cmd.positionals)]
        lines.append(f"        {cmd.name})")
        lines.append("            _arguments \\")
        lines += [f"                {spec} \\" for spec in specs[:-1]]
        lines.append(f"                {specs[-1]}" if specs else "                ''")
        lines.append("            ;;")
    lines += [
        "    esac",
        "}",
        "",
        'if [[ ${zsh_eval_context[-1]} == loadautofunc ]]; then',
        '    _cachefs "$@"',
        "else",
        "    compdef _cachefs cachefs",
        "fi",
        "",
    ]
    return "\n".join(lines)


# -- fish -----------------------------------------------------------------------------------


def _fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _fish_values(arg: Arg) -> str:
    return _value_action(arg, lambda words: f"-x -a {_fish_quote(words)}",
                         {"dir": "-x -a '(__fish_complete_directories)'", "file": "-r -F",
                          "": "-x"})


def _fish_option(condition: str, option: Arg) -> str:
    names = " ".join(f"-s {f[1:]}" if not f.startswith("--") else f"-l {f[2:]}"
                     for f in option.flags)
    values = "" if option.kind == "flag" else " " + _fish_values(option)
    return f"complete -c cachefs -n {condition} {names}{values} -d {_fish_quote(option.help)}"


def fish(top: Command, commands: list[Command]) -> str:
    lines = [
        "# fish completion for cachefs; generated by `cachefs completion fish`.",
        "# Save it as ~/.config/fish/completions/cachefs.fish",
        "complete -c cachefs -f",
    ]
    lines += [_fish_option("__fish_use_subcommand", o) for o in top.options]
    lines += [f"complete -c cachefs -n __fish_use_subcommand -a {c.name} "
              f"-d {_fish_quote(c.help)}" for c in commands]
    for cmd in commands:
        condition = _fish_quote(f"__fish_seen_subcommand_from {cmd.name}")
        lines += [_fish_option(condition, o) for o in cmd.options]
        for arg in cmd.positionals[:1]:  # fish cannot tell positionals apart; the first decides
            if arg.choices or arg.kind:
                lines.append(f"complete -c cachefs -n {condition} {_fish_values(arg)}")
    return "\n".join(lines) + "\n"


WRITERS: dict[str, Callable[[Command, list[Command]], str]] = {
    "bash": bash, "zsh": zsh, "fish": fish}


def script(shell: str, parser: argparse.ArgumentParser) -> str:
    """The completion script for ``shell`` (one of SHELLS)."""
    top, commands = describe(parser)
    return WRITERS[shell](top, commands)
