"""Evaluation of frozen backbones: few-shot episodes, Lake's one-shot runs, the linear probe and kNN, crowding, the σ universality score, and the suite that ties them into the three axes."""
