"""Hyperparameter studies of weight decay against learning rate on member arrays of ResNets."""

__version__ = "0.1.0"
