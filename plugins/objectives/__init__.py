"""Built-in fine-tuning objectives, one file each."""
