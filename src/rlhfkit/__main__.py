from rlhfkit.cli import main

main()
