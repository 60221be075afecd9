#!/usr/bin/env python3
"""Regenerate the script reference (docs/reference.md) from every script's --help (run after changing a flag).

The name is historical: the reference used to live in the README.
"""

import sys

from tracekit.core.clidoc import REFERENCE, reference, splice

if __name__ == "__main__":
    if "-h" in sys.argv or "--help" in sys.argv:
        print(__doc__.strip())
        sys.exit(0)
    REFERENCE.write_text(splice(REFERENCE.read_text(), reference()))
    print(f"updated {REFERENCE}")
