"""Fine-tuning jobs: their request, policy (auto hyperparameters), file validation and supervision."""
