"""Diabetes regression: `mse` loss, step decay, ReduceLROnPlateau; reports RMSE and R².

A thin wrapper: the code lives in exburn_tf/examples/regression_mse.py, so that
`exburn-tf train regression_mse` runs it after a pip install too. Options: --help.

    python examples/regression_mse.py [--epochs N] [--batch-size B] [--quick] ...
"""

import sys

from exburn_tf.examples.regression_mse import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
