#!/bin/busybox sh
# wsnic-trio test guest init (PID 1 of the initramfs), shared by the QEMU and
# the User Mode Linux guest.  Driven entirely by wsnic.* kernel parameters;
# see tests/guests/README.md.  Every result line starts with "WSNIC-GUEST ".

/bin/busybox --install -s /bin
export PATH=/bin
umask 022

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
mkdir -p /var/run /www

say() { echo "WSNIC-GUEST $*"; }
uptime_s() { read -r up _ < /proc/uptime; echo "$up"; }

halt_guest() {
    say "done uptime=$(uptime_s)"
    sleep 1
    sync
    poweroff -f
    # poweroff should not return; make sure init never exits (kernel panic).
    halt -f
    while true; do sleep 60; done
}

fail() {
    say "error $*"
    halt_guest
}

# --- kernel command line ---------------------------------------------------
HOSTNAME=wsnic-guest
PINGS=""
URLS=""
RESOLVES=""
ARPINGS=""
SERVE=0
STATIC=""
GATEWAY=""
IFACE=""
DHCP_TRIES=15
PING_TRIES=10
HTTP_TRIES=5
HTTP_TIMEOUT=30
BLOB_KIB=64
LIFETIME=900
set -f  # no globbing of parameter values (URLs may contain ? or *)
for arg in $(cat /proc/cmdline); do
    val="${arg#*=}"
    case "$arg" in
        wsnic.hostname=*) HOSTNAME="$val" ;;
        wsnic.ping=*) PINGS="$PINGS $(echo "$val" | tr ',' ' ')" ;;
        wsnic.http=*) URLS="$URLS $val" ;;
        wsnic.resolve=*) RESOLVES="$RESOLVES $(echo "$val" | tr ',' ' ')" ;;
        wsnic.arping=*) ARPINGS="$ARPINGS $(echo "$val" | tr ',' ' ')" ;;
        wsnic.serve=*) SERVE="$val" ;;
        wsnic.static=*) STATIC="$val" ;;
        wsnic.gw=*) GATEWAY="$val" ;;
        wsnic.iface=*) IFACE="$val" ;;
        wsnic.dhcptries=*) DHCP_TRIES="$val" ;;
        wsnic.pingtries=*) PING_TRIES="$val" ;;
        wsnic.httptries=*) HTTP_TRIES="$val" ;;
        wsnic.httptimeout=*) HTTP_TIMEOUT="$val" ;;
        wsnic.blob=*) BLOB_KIB="$val" ;;
        wsnic.lifetime=*) LIFETIME="$val" ;;
    esac
done
set +f

hostname "$HOSTNAME"
say "boot hostname=$HOSTNAME kernel=$(uname -r) arch=$(uname -m) uptime=$(uptime_s)"

# --- drivers (QEMU image only; the UML image has no modules) ---------------
if [ -f /lib/modules/load.list ]; then
    for mod in $(cat /lib/modules/load.list); do
        insmod "/lib/modules/$mod" || say "error insmod $mod"
    done
fi

# --- find the network interface --------------------------------------------
ip link set lo up
if [ -z "$IFACE" ]; then
    i=0
    while [ $i -lt 100 ]; do
        for path in /sys/class/net/*; do
            name="${path##*/}"
            case "$name" in
                lo|sit*|tunl*|ip6tnl*|ip6gre*|gre*|erspan*|dummy*|bond*) continue ;;
            esac
            IFACE="$name"
            break
        done
        [ -n "$IFACE" ] && break
        sleep 0.1
        i=$((i + 1))
    done
fi
[ -n "$IFACE" ] && [ -e "/sys/class/net/$IFACE" ] || fail "no network interface"
MAC="$(cat "/sys/class/net/$IFACE/address")"
# UML's vector transports connect to their peer (bess: connect(dst)) when the
# link goes up.  If that fails, UML 6.1 keeps the device half-open and every
# later attempt fails with ENXIO, so there is no point retrying: the peer must
# be listening before the guest boots.
err="$(ip link set "$IFACE" up 2>&1)" || fail "cannot bring $IFACE up: $err"
say "iface name=$IFACE mac=$MAC uptime=$(uptime_s)"

# --- address -----------------------------------------------------------------
if [ -n "$STATIC" ]; then
    ip addr add "$STATIC" dev "$IFACE" || fail "static address $STATIC"
    [ -n "$GATEWAY" ] && ip route add default via "$GATEWAY"
    IP="${STATIC%/*}"
    say "static ip=$IP prefix=${STATIC#*/} router=${GATEWAY:-none} uptime=$(uptime_s)"
else
    # -t tries, -T 2 s between discovers, -A 1 s pause after a failure,
    # -n give up when no lease, -q quit once bound (the address stays).
    udhcpc -i "$IFACE" -s /etc/udhcpc.script -x "hostname:$HOSTNAME" \
        -t "$DHCP_TRIES" -T 2 -A 1 -n -q -f >/tmp/udhcpc.log 2>&1
    [ -f /tmp/lease.env ] || { cat /tmp/udhcpc.log; fail "dhcp no lease on $IFACE"; }
    . /tmp/lease.env
    IP="$LEASE_IP"
    say "lease ip=$LEASE_IP prefix=$LEASE_PREFIX router=$LEASE_ROUTER dns=$LEASE_DNS server=$LEASE_SERVER leasetime=$LEASE_TIME domain=$LEASE_DOMAIN uptime=$(uptime_s)"
fi

# --- checks ------------------------------------------------------------------
for target in $PINGS; do
    ok=0
    n=0
    while [ $n -lt "$PING_TRIES" ]; do
        n=$((n + 1))
        if out="$(ping -c 1 -W 2 "$target" 2>&1)"; then
            ok=1
            break
        fi
    done
    if [ $ok = 1 ]; then
        rtt="$(echo "$out" | sed -n 's/.*time=\([0-9.]*\) ms.*/\1/p' | head -n 1)"
        say "ping $target ok tries=$n rtt_ms=${rtt:-?} uptime=$(uptime_s)"
    else
        say "ping $target fail tries=$n uptime=$(uptime_s)"
    fi
done

# An ARP request is a broadcast on the link itself: an answer means the target
# is on this guest's Ethernet segment, whatever the IP subnets say.
for target in $ARPINGS; do
    if arping -I "$IFACE" -f -c 3 -w 4 "$target" >/tmp/arping.out 2>&1; then
        say "arping $target ok uptime=$(uptime_s)"
    else
        say "arping $target fail uptime=$(uptime_s)"
    fi
done

for name in $RESOLVES; do
    out="$(timeout 20 nslookup -type=a "$name" 2>&1)"
    addr="$(echo "$out" | sed -n '/^Name:/,$ s/^Address[^:]*: *\([0-9.]*\).*/\1/p' | grep -v '^$' | head -n 1)"
    if [ -n "$addr" ]; then
        say "resolve $name ok addr=$addr uptime=$(uptime_s)"
    else
        say "resolve $name fail"
        echo "$out"
    fi
done

set -f
for url in $URLS; do
    ok=0
    n=0
    while [ $n -lt "$HTTP_TRIES" ]; do
        n=$((n + 1))
        rm -f /tmp/http.out
        if timeout "$HTTP_TIMEOUT" wget -q -O /tmp/http.out "$url" 2>/tmp/http.err; then
            ok=1
            break
        fi
        sleep 1
    done
    if [ $ok = 1 ]; then
        size="$(wc -c < /tmp/http.out | tr -d ' ')"
        sum="$(sha256sum /tmp/http.out)"
        body=""
        if [ "$size" -le 512 ]; then
            body=" body64=$(base64 < /tmp/http.out | tr -d '\n')"
        fi
        say "http ok url=$url bytes=$size sha256=${sum%% *} tries=$n uptime=$(uptime_s)$body"
    else
        say "http fail url=$url tries=$n uptime=$(uptime_s)"
    fi
done

set +f

# --- serve or power off ------------------------------------------------------
if [ "$SERVE" = 1 ]; then
    echo "wsnic-guest hostname=$HOSTNAME ip=$IP mac=$MAC" > /www/index.html
    dd if=/dev/urandom of=/www/blob.bin bs=1024 count="$BLOB_KIB" 2>/dev/null
    blobsum="$(sha256sum /www/blob.bin)"
    httpd -p 80 -h /www || fail "httpd did not start"
    say "ready ip=$IP hostname=$HOSTNAME port=80 blob_bytes=$((BLOB_KIB * 1024)) blob_sha256=${blobsum%% *} uptime=$(uptime_s)"
    if [ "$LIFETIME" -gt 0 ]; then
        sleep "$LIFETIME"
        say "lifetime expired"
        halt_guest
    fi
    while true; do sleep 3600; done
fi
halt_guest
