//! The `agent` client CLI commands.
