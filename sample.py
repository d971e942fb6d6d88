"""Draw with a trained DRAW: python sample.py [ckpt_path=PATH] [mode=prior|reconstruct] [boxes=true] (--help)"""
from draw.cli import sample

if __name__ == "__main__":
    sample()
