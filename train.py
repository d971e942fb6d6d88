"""Train DRAW: python train.py [attention=none|read|write|read_write] [experiment=...] [key=value ...] (--help)"""
from draw.cli import train

if __name__ == "__main__":
    train()
