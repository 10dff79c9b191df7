"""Review of the command line and configuration against the contract (§1, §2, §5): each test is a promise the
contract makes that the product did not keep when this review ran it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from conftest import Cli, sell


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
