"""`python -m yolodistill …` runs the command, as `yolodistill …` does."""

import os
import sys

from ._command import binary

if __name__ == "__main__":
    command = str(binary())
    os.execv(command, [command, *sys.argv[1:]])
