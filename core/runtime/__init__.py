"""Shared machinery of jobs and plugins: video I/O, the stage cache, the model resolver, face geometry
and tracking, attention capture/injection, progress, the sample clip."""
