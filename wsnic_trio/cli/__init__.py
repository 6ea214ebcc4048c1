"""The command line: the server, connect and ctl, and how the server is assembled."""
