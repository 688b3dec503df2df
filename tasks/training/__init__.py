"""What training draws from the data: the augmentations (two views per image) and the episodes of the episodic methods."""
