"""MNIST-1D CNN: Nesterov SGD, warmup + cosine, decay, clipping; TensorBoard, SavedModel.

A thin wrapper: the code lives in exburn_tf/examples/mnist1d_cnn.py, so that
`exburn-tf train mnist1d_cnn` runs it after a pip install too. Options: --help.

    python examples/mnist1d_cnn.py [--epochs N] [--batch-size B] [--quick] ...
"""

import sys

from exburn_tf.examples.mnist1d_cnn import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
