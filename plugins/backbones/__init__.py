"""Built-in backbones, one file each."""
