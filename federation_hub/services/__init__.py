"""Glue between the HTTP protocol and the math/storage: what a request does, not how it is spoken."""
