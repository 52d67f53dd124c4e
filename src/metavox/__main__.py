from metavox.cli import main

main()
