"""tf.data pipeline: shuffle, map (random shift + noise), batch, prefetch, fed to eb.fit.

A thin wrapper: the code lives in exburn_tf/examples/tfdata_pipeline.py, so that
`exburn-tf train tfdata_pipeline` runs it after a pip install too. Options: --help.

    python examples/tfdata_pipeline.py [--epochs N] [--batch-size B] [--quick] ...
"""

import sys

from exburn_tf.examples.tfdata_pipeline import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
