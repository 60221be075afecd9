#!/usr/bin/env python3
"""Regenerate the README's script reference from every script's --help (run after changing a flag)."""

import sys

from tracekit.core.clidoc import README, reference, splice

if __name__ == "__main__":
    if "-h" in sys.argv or "--help" in sys.argv:
        print(__doc__.strip())
        sys.exit(0)
    README.write_text(splice(README.read_text(), reference()))
    print(f"updated {README}")
