"""Jobs: thin sequences of stages (edit, faces, finetune, bench) that the CLI and other front ends call."""
