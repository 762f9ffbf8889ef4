"""ray_rlhf: a Ray-native RLHF trainer."""

__version__ = "0.1.0"
