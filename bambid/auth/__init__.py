"""Accounts, sessions, passwords and who a request or connection belongs to."""
