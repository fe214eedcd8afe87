"""python -m image_build [build] [options]  (same as `kindling build`)."""

import sys

from image_build.cli import cli

if __name__ == "__main__":
    sys.exit(cli())
