"""Custom loop: data_loader + train_step, a compute_gradients check, profile_step timings.

A thin wrapper: the code lives in exburn_tf/examples/custom_loop.py, so that
`exburn-tf train custom_loop` runs it after a pip install too. Options: --help.

    python examples/custom_loop.py [--epochs N] [--batch-size B] [--quick] ...
"""

import sys

from exburn_tf.examples.custom_loop import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
