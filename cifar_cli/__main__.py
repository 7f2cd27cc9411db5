from cifar_cli.cli import main

main()
