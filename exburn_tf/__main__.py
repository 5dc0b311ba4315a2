"""`python -m exburn_tf`: the `exburn-tf` command (see `exburn_tf.cli`)."""

import sys

from exburn_tf.cli import main

if __name__ == "__main__":
    sys.exit(main())
