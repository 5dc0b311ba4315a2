"""Digits MLP: Adam with EarlyStopping(restore_best_weights=True) on a validation split.

A thin wrapper: the code lives in exburn_tf/examples/digits_adam.py, so that
`exburn-tf train digits_adam` runs it after a pip install too. Options: --help.

    python examples/digits_adam.py [--epochs N] [--batch-size B] [--quick] ...
"""

import sys

from exburn_tf.examples.digits_adam import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
