"""Helpers for the notebooks (notebooks/): they read a pipeline run's output files, in the formats the stages
write, and draw them. No stage imports this floor; it takes from the stages only the names of their files."""
