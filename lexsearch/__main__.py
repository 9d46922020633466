"""`python -m lexsearch` (and `torchrun -m lexsearch train ...`) runs the command line."""

from lexsearch.cli import main

if __name__ == "__main__":
    main()
