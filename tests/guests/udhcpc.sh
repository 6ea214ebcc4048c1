#!/bin/sh
# udhcpc -s script of the wsnic-trio test guest: applies the lease and writes
# /tmp/lease.env for /init.  udhcpc passes: $1 = deconfig|bound|renew|nak|leasefail
# and the environment interface, ip, subnet, mask, router, dns, serverid,
# lease, domain.
case "$1" in
    deconfig)
        ip -4 addr flush dev "$interface"
        ip link set "$interface" up
        ;;
    bound|renew)
        prefix="${mask:-}"
        if [ -z "$prefix" ]; then
            eval "$(ipcalc -p "$ip" "$subnet")"
            prefix="$PREFIX"
        fi
        ip -4 addr flush dev "$interface"
        ip addr add "$ip/$prefix" dev "$interface"
        ip route del default 2>/dev/null
        first_router=""
        for r in $router; do
            [ -z "$first_router" ] && first_router="$r"
        done
        [ -n "$first_router" ] && ip route add default via "$first_router" dev "$interface"
        : > /etc/resolv.conf
        [ -n "$domain" ] && echo "search $domain" >> /etc/resolv.conf
        first_dns=""
        for d in $dns; do
            echo "nameserver $d" >> /etc/resolv.conf
            [ -z "$first_dns" ] && first_dns="$d"
        done
        {
            echo "LEASE_IP='$ip'"
            echo "LEASE_PREFIX='$prefix'"
            echo "LEASE_ROUTER='${first_router:-none}'"
            echo "LEASE_DNS='${first_dns:-none}'"
            echo "LEASE_SERVER='${serverid:-none}'"
            echo "LEASE_TIME='${lease:-0}'"
            echo "LEASE_DOMAIN='${domain:-none}'"
        } > /tmp/lease.env
        ;;
esac
exit 0
