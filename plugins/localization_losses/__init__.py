"""Built-in localization losses, one file each."""
