"""Review of the command line and configuration against the contract (§1, §2, §5): each test is a promise the
contract makes that the product did not keep when this review ran it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from conftest import Cli, sell


def test_an_env_file_that_cannot_be_read_is_a_configuration_error_exit_2(tmp_path):
    """Exit code 2: "usage or configuration error"; §2: "a .env file fills in what the environment lacks".
    A .env that is not UTF-8 (a password with an accented letter saved as Latin-1) ends in exit 1 as
    `unexpected UnicodeDecodeError`, as if the run had failed, instead of exit 2 naming the file."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    env_file = workdir / "lspos.env"
    env_file.write_bytes(b"LIGHTSPEED_ACCOUNT_ID=182255\nSALESFORCE_PASSWORD=caf\xe9\n")
    cli = Cli({"LSPOS_STATE_PATH": str(tmp_path / "state.db")}, workdir)
    result = cli("checkpoint", "show", "--json", "--env-file", str(env_file))
    assert result.code == 2, (result.code, result.stdout, result.stderr)
    assert result.json["exit_code"] == 2
    assert "lspos.env" in result.json["error"]


def test_python_dash_m_lspos_sync_is_the_same_program_as_the_console_script():
    """§1 "console script `lspos-sync` (`python -m lspos_sync` is the same program)". Run as `python -m`, the
    program names itself `python -m lspos_sync` in --version, --help and every usage error, where the console
    script says `lspos-sync`."""
    script = Path(sys.executable).parent / "lspos-sync"
    assert script.exists(), script

    def both(*args: str) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
        return (subprocess.run([sys.executable, "-m", "lspos_sync", *args], capture_output=True, text=True),
                subprocess.run([str(script), *args], capture_output=True, text=True))

    module, console = both("--version")
    assert (module.returncode, module.stdout) == (console.returncode, console.stdout)
    module, console = both("sync", "--bogus")
    assert (module.returncode, module.stderr) == (console.returncode, console.stderr)
