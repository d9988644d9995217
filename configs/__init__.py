"""ml_collections config files: `python train.py --config configs/<name>.py`."""
