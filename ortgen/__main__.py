from ortgen.cli import main

main()
