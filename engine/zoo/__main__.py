"""`python -m engine.zoo build|verify|table`: build and verify are `python -m engine zoo ...`; table
runs engine.sweep over the zoo and keeps its result (engine.zoo.merge_table)."""

import sys

from engine.__main__ import main

if __name__ == "__main__":
    if sys.argv[1:2] == ["table"]:
        from engine.zoo.merge_table import main as table_main

        sys.exit(table_main(sys.argv[2:]))
    sys.exit(main(["zoo", *sys.argv[1:]]))
