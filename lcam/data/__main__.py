"""``python -m lcam.data OUTDIR --count 16``: export built-in dataset images as PNG files."""

from lcam.data.synthetic import main

main()
