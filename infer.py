"""Explain images or folders with a trained head: ``python infer.py --checkpoint CKPT --input PATH... --output DIR``."""

import sys

from lcam.inference import main

if __name__ == "__main__":
    sys.exit(main())
