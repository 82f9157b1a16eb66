"""Built-in identity encoders, one file each."""
