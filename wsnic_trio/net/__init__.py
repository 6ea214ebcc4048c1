"""Socket helpers shared by transports and the control API: listen, dial, unix paths."""
