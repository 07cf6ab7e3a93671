"""The layer core and its linen and NNX front ends."""
