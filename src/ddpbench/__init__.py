"""ddpbench: how well does DistributedDataParallel training scale on this machine?"""

__version__ = "0.1.0"
