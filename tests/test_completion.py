"""CLI polish: completion scripts that really complete in bash, zsh and fish; docs/CLI.md
regenerated from the parser; --version; progress bars only on a terminal, colour off with
NO_COLOR."""

from __future__ import annotations

import os
import pty
import select
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import cachefs
from cachefs.cli.completion import SHELLS, describe, script
from cachefs.cli.main import build_parser

from .conftest import ROOT, cli

CACHEFS = str(Path(sys.executable).parent / "cachefs")


def bash_complete(line: str) -> list[str]:
    """What `cachefs` completion offers for ``line`` (cursor at the end), driven like readline."""
    program = (f"source <({CACHEFS} completion bash) || exit 3\n"
               'COMP_LINE=$1 COMP_POINT=${#1}\n_cachefs\nprintf "%s\\n" "${COMPREPLY[@]}"\n')
    result = subprocess.run(["bash", "--norc", "-c", program, "bash", line],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_bash_script_loads_and_completes(tmp_path: Path) -> None:
    result = subprocess.run(["bash", "--norc", "-c",
                             f"source <({CACHEFS} completion bash) && complete -p cachefs"],
                            capture_output=True, text=True, timeout=30)
    assert result.stdout.strip() == "complete -F _cachefs cachefs", result.stderr
    assert result.stderr == ""
    assert bash_complete("cachefs mo") == ["mount"]
    assert {"mount", "umount", "completion", "--version"} <= set(bash_complete("cachefs "))
    assert bash_complete("cachefs mount --write") == ["--writeback"]
    assert bash_complete("cachefs mount --writeback ") == ["sync", "async"]
    assert bash_complete("cachefs completion z") == ["zsh"]
    (tmp_path / "somedir").mkdir()
    (tmp_path / "somefile").touch()
    # The mount point is a directory, after an s3:// value that COMP_WORDS would split at ':'
    line = f"cachefs mount --store s3://b/p {tmp_path}/some"
    assert bash_complete(line) == [f"{tmp_path}/somedir"]
    assert bash_complete(f"cachefs key x --hash-from {tmp_path}/somef") == [
        f"{tmp_path}/somefile"]
    assert bash_complete("cachefs pack /tmp ") == []  # KEY: nothing to offer


ZSH_DRIVER = r"""
zmodload zsh/zpty
zpty z zsh -f -i
zpty -w z 'PROMPT=; autoload -U compinit; compinit -u -D; source <(%(cachefs)s completion zsh)'
zpty -w z 'compadd() { local -a m; builtin compadd -O m "$@"'
zpty -w z '(( $#m )) && print -r -- "HIT:${(j: :)m}"; builtin compadd "$@"; }'
zpty -w z 'print RE""ADY'
zpty -r z out '*READY*'
zpty -w -n z "$1"$'\t'
# Wait for the completion to offer something before typing on: zsh drops a completion that
# finds keys already waiting (a busy machine is slow to complete).
zpty -r z first '*HIT:*'$'\n'
zpty -w -n z $'\x15''print DO""NE'$'\n'
zpty -r z out '*DONE*'
print -r -- "$first$out"
zpty -d z
"""


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
@pytest.mark.parametrize("line, expected", [
    ("cachefs mo", {"mount"}),
    ("cachefs mount --writeback ", {"sync", "async"}),
    ("cachefs completion ", {"bash", "zsh", "fish"}),
])
def test_zsh_script_completes(line: str, expected: set[str]) -> None:
    driver = ZSH_DRIVER % {"cachefs": CACHEFS}
    result = subprocess.run(["zsh", "-f", "-c", driver, "zsh", line], capture_output=True,
                            text=True, timeout=60)
    hits = [x.split("HIT:", 1)[1].split() for x in result.stdout.splitlines() if "HIT:" in x]
    assert any(set(h) == expected for h in hits), result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed")
def test_fish_script_completes() -> None:
    def complete(line: str) -> list[str]:
        result = subprocess.run(
            ["fish", "--no-config", "-c", f"{CACHEFS} completion fish | source; "
             f"complete -C {line!r}"], capture_output=True, text=True, timeout=30)
        assert result.stderr == "", result.stderr
        return [x.split("\t")[0] for x in result.stdout.splitlines()]

    assert complete("cachefs mo") == ["mount"]
    assert sorted(complete("cachefs mount --writeback ")) == ["async", "sync"]
    assert "--cache-dir" in complete("cachefs mount --cache-d")


def test_every_command_and_flag_is_described() -> None:
    _top, commands = describe(build_parser())
    assert [c.name for c in commands][:2] == ["mount", "umount"]
    mount = next(c for c in commands if c.name == "mount")
    flags = {f for o in mount.options for f in o.flags}
    assert {"--cache-dir", "--read-only", "--restore-key", "--foreground"} <= flags
    assert "--ready-fd" not in flags  # hidden from --help, hidden from completion
    for shell in SHELLS:
        text = script(shell, build_parser())
        for command in commands:
            assert command.name in text, (shell, command.name)
    assert cli("completion", "tcsh").returncode == 2


def test_cli_doc_is_generated_from_the_parser() -> None:
    result = subprocess.run([sys.executable, "scripts/gen_cli_doc.py", "--check"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    doc = (ROOT / "docs/CLI.md").read_text()
    assert "| 1 | not there" in doc and "| 2 | an operational error" in doc
    for command in ("mount", "umount", "completion", "key"):
        assert f"## `cachefs {command}`" in doc


def test_version_and_completion_help() -> None:
    assert cli("--version", check=True).stdout.strip() == f"cachefs {cachefs.__version__}"
    text = cli("completion", "--help", check=True).stdout
    assert "examples:" in text and "cachefs completion bash" in text


def _pack_stderr_on_a_terminal(tmp_path: Path, env: dict[str, str]) -> bytes:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "f").write_bytes(os.urandom(64 << 10))
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "cachefs", "pack", "--force", "--store",
                             (tmp_path / "store").as_uri(), str(src), "k"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave,
                            env={**os.environ, **env})
    os.close(slave)
    out = b""
    while True:
        ready, _, _ = select.select([master], [], [], 30)
        if not ready:
            break
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the other side closed
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert proc.wait(30) == 0, out
    return out


def test_progress_only_on_a_terminal_and_no_color(tmp_path: Path) -> None:
    piped = cli("pack", "--store", (tmp_path / "store").as_uri(), str(ROOT / "deploy"), "p")
    assert piped.returncode == 0 and "[" not in piped.stderr  # no bar into a pipe or log
    colored = _pack_stderr_on_a_terminal(tmp_path, {})
    assert b"packing" in colored and b"\x1b[32m" in colored
    plain = _pack_stderr_on_a_terminal(tmp_path, {"NO_COLOR": "1"})
    assert b"packing" in plain and b"\x1b[" not in plain
