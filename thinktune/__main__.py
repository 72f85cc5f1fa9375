from thinktune.cli import main

main()
