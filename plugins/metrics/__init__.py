"""Built-in metrics, one file each."""
