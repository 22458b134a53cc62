"""Model registry: versions and aliases in the database, verified artifacts in the model store."""
