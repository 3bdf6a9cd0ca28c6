"""Default ``.mask`` configurations and halo/spike templates of the mask module."""
