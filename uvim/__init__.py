"""UViM (Kolesnikov et al. 2022) with a swappable FSQ / VQ bottleneck, for depth, colorization
and panoptic segmentation.

stage1.py: oracle autoencoder of the task output with image context; stage2.py: encoder-decoder
language model over the stage-I code; tasks/: the dense tasks and the two training stages.
"""
