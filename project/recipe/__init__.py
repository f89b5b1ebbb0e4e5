"""The training recipe: set-up, the loop, the end of an epoch, restore, messages."""
