"""What touches the host: netlink, TAPs, nftables, dnsmasq, sysctls, /proc."""
