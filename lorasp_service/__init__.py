"""The service layer shared by `api` and `worker`: settings, database, ORM, blob storage."""
