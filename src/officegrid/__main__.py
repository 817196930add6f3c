from officegrid.cli import main

main()
