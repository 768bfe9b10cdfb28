"""Explain images or folders in one forward pass each.

python infer.py --checkpoint CKPT --input PATH... --output DIR
"""

import sys

from lcam.inference import main

if __name__ == "__main__":
    sys.exit(main())
