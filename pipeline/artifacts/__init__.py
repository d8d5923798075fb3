"""What stages write and where: stage folders (atomic, self-describing), the model file, the run-folder layout, the stage store, locks, cards, test probabilities."""
