"""Built-in inverters, one file each."""
