from flatmix.cli import main

main()
