"""Shared test data: eight papers (title, abstract) for tiny retrieval and classification sets, and
MaxSim written out."""

import torch

PAPERS = [
    ("graph neural networks for molecule property prediction", "We predict molecular properties with message passing."),
    ("adversarial robustness of image classifiers", "Small input perturbations fool convolutional networks."),
    ("faster transformer attention on long documents", "A sparse attention pattern scales linearly with length."),
    ("reinforcement learning for robot grasping", "A robot arm learns to grasp objects from camera images."),
    ("protein folding with deep learning", "Predicted residue distances give accurate structures."),
    ("federated learning with private clients", "Clients train locally and share only noisy updates."),
    ("speech recognition for low-resource languages", "Multilingual pretraining helps languages with little audio."),
    ("compressing neural networks by pruning", "Removing small weights keeps accuracy at a tenth of the size."),
]


def plain_maxsim(queries: list[torch.Tensor], documents: list[torch.Tensor]) -> torch.Tensor:
    """ColBERT's MaxSim written out: per query token, its best dot product over the document's tokens."""
    return torch.stack(
        [torch.stack([torch.stack([(t * d).sum(-1).max() for t in q]).mean() for d in documents]) for q in queries]
    )
