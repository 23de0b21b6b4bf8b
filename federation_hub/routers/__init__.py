"""HTTP protocol only: parse, authorise, call a service, shape the reply."""
