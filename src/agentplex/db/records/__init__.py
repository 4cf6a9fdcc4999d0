"""Every SQL query of a concept, as plain functions on a connection; rows come back as
mappings, and core turns them into its own types."""
