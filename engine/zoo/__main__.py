"""`python -m engine.zoo build|verify|table`: the same as `python -m engine zoo ...`."""

import sys

from engine.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["zoo", *sys.argv[1:]]))
