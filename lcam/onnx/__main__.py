"""``python -m lcam.onnx``: see :func:`lcam.onnx.cli.main`."""

import sys

from lcam.onnx.cli import main

sys.exit(main())
