"""Built-in face processors, one file each."""
