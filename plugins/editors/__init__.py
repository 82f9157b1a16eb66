"""Built-in editors, one file each."""
