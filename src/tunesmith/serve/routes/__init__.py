"""The API's routes, one module per resource: files, jobs, models, inference, embeddings."""
