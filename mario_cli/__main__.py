from mario_cli.cli import main

main()
