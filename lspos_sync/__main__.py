from lspos_sync.cli import main

main()
