"""Sweep configs: one file per study, each a `get_config(arg)` listing the runs to train."""
