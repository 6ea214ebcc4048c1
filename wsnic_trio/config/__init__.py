"""The settings model: options table, config file, endpoint syntaxes."""
