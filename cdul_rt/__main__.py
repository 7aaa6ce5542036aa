from cdul_rt.cli import main

main()
