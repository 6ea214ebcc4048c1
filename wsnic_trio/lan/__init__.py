"""The LAN backends: the root bridge, the rootless helper, the --user split."""
