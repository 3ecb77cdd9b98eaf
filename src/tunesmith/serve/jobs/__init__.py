"""Fine-tuning jobs: their policy (auto hyperparameters), file validation and supervision."""
