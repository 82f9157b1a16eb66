"""Built-in edit strategies (edit methods), one file each."""
