from lspos_sync.cli import run

run()
