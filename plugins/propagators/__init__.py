"""Built-in propagators, one file each."""
