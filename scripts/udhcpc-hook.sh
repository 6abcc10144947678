#!/bin/sh
# A hook for busybox udhcpc (`udhcpc -i eth0 -q -n -s scripts/udhcpc-hook.sh`)
# that applies the lease to the interface and nothing else: the address with
# its prefix, the MTU if the server sent one, and a default route via the first
# router. Unlike Debian's default script (/etc/udhcpc/default.script) it never
# rewrites /etc/resolv.conf, which inside `ip netns exec` is the host's file.
#
# udhcpc calls it with the event as $1 (deconfig, bound, renew, leasefail, nak)
# and the lease in the environment: interface, ip, mask (prefix length),
# subnet (dotted mask), broadcast, router (a list), mtu, lease (seconds).
# shellcheck disable=SC2154  # those variables come from udhcpc's environment
case "$1" in
deconfig)
  # Before the first request, and when a lease is lost: up, and no address.
  ip link set dev "$interface" up
  ip -4 addr flush dev "$interface"
  ;;
bound | renew)
  # replace, not flush and add: on a renewal the address must not blink.
  ip -4 addr replace "$ip/${mask:-$subnet}" broadcast "${broadcast:-+}" dev "$interface"
  if [ -n "$mtu" ]; then ip link set dev "$interface" mtu "$mtu"; fi
  for r in $router; do
    ip -4 route replace default via "$r" dev "$interface"
    break
  done
  ;;
leasefail | nak) ;;
esac
exit 0
