"""Small tasks that run on the shared loop without the MaskGIT or UViM packages."""
