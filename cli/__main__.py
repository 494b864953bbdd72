from minisw.cli.main import main

main()
