"""UViM experiment configs: depth, colorization and panoptic, each `get_config("fsq,tiny")`."""
