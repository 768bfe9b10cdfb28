"""Explain images or folders in one forward pass each.

python infer.py --checkpoint CKPT --input PATH... --output DIR

Writes <name>.map.npy, <name>.overlay.png per image and predictions.jsonl (see lcam.inference);
--output may be the input folder: no input is ever written over. ``--help`` lists the options.
"""

import sys

from lcam.inference import main

if __name__ == "__main__":
    sys.exit(main())
