"""phase-pipeline: ordered phases with dependencies, a human-editable state file, resume."""
