"""A user's own code, as the story's user has it: their model class and their training script (see README, "The
story end to end"). Nothing here imports the framework."""
