#!/usr/bin/env python
"""Train GViT from a checkout: the trainer is :mod:`timm_gvit.train`, installed as ``gvit-train``.

    python train_gvit.py                          # built-in run: gvit_nano on scikit-learn's digits (2-core CPU, < 3 min)
    accelerate launch train_gvit.py --dataset PATH_OR_HUB_ID --model gvit_small ...
    python train_gvit.py --help                   # every option; --config FILE.yaml takes them from a file

This file keeps those commands working in a checkout (Python puts the script's folder, so the
checkout's ``timm_gvit``, first on the path), and ``import train_gvit`` gives the trainer's functions.
"""

import sys

from timm_gvit.train import (Run, announce, end_epoch, evaluate, finish, main, make_loaders, resume_stream, setup, train,
                             train_one_epoch, validate)

__all__ = ["Run", "announce", "end_epoch", "evaluate", "finish", "main", "make_loaders", "resume_stream", "setup", "train",
           "train_one_epoch", "validate"]

if __name__ == "__main__":
    sys.exit(main())
