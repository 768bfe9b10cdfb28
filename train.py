"""Train, validate or test an L-CAM head.

python train.py fit --config configs/quickstart.yaml
"""

from lcam.cli import main

if __name__ == "__main__":
    main()
