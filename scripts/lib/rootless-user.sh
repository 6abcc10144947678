# shellcheck shell=bash
# What the rootless tests (scripts/test-rootless-uplink.sh,
# test-docker-rootless.sh, test-rootless-podman.sh) share: a throwaway
# unprivileged user with /etc/subuid and /etc/subgid ranges, a work
# directory it can use, /dev/net/tun at 0666 for the run, and their removal;
# and the check/ok/fail/wait_for helpers of their output. Sourced, not run.
#
# The script calls rootless_init before it installs its EXIT trap, and
# rootless_cleanup from that trap (after stopping what it started itself).

# rootless_init USER TEMPLATE: sets user (a name with the script's pid) and
# work (a fresh directory, mktemp -d TEMPLATE), and remembers /dev/net/tun's
# mode (rootless_cleanup restores it); no check failed yet.
rootless_init() {
  user=$1
  work=$(mktemp -d "$2")
  tun_mode=$(stat -c %a /dev/net/tun)
  fails=0
}

# rootless_add_user: the user (useradd gives it /etc/subuid and /etc/subgid
# ranges: SUB_UID_COUNT in login.defs), with $work/home its home, $work/run
# its XDG_RUNTIME_DIR (0700) and target/debug/tapyard installed as
# $work/bin/tapyard; sets uid and gid; /dev/net/tun at 0666 (pasta,
# slirp4netns and tapyard open it as the user).
rootless_add_user() {
  useradd -M -d "$work/home" -s /bin/sh "$user"
  uid=$(id -u "$user")
  gid=$(id -g "$user")
  mkdir -p "$work/bin" "$work/home" "$work/run"
  install -m 755 target/debug/tapyard "$work/bin/tapyard"
  chown "$uid:$gid" "$work/home" "$work/run"
  chmod 755 "$work"
  chmod 700 "$work/run"
  [ "$tun_mode" = 666 ] || chmod 0666 /dev/net/tun
}

# rootless_user_env [NAME=VALUE...]: sets user_env, so that
# "${user_env[@]}" CMD... runs CMD as the user with its own home and runtime
# directory and the given variables (setpriv and env exec: CMD keeps their
# pid).
rootless_user_env() {
  user_env=(setpriv --reuid="$uid" --regid="$gid" --init-groups --
    env -i PATH="/usr/sbin:/usr/bin:/sbin:/bin" HOME="$work/home" XDG_RUNTIME_DIR="$work/run" "$@")
}
as_user() { "${user_env[@]}" "$@"; }

# rootless_cleanup: kills whatever the user still runs (all of it started
# by the script, found by the user's uid, killed by pid), removes the user
# and its lines in /etc/{passwd,group,shadow,gshadow,subuid,subgid} and
# their `-` backups (useradd/userdel leave it in the backups, and userdel
# keeps its subordinate ranges), and restores /dev/net/tun's mode. The
# work directory is the script's to remove.
rootless_cleanup() {
  local p f
  if id "$user" >/dev/null 2>&1; then
    for p in $(pgrep -u "$user"); do kill -KILL "$p" 2>/dev/null; done
    for _ in $(seq 100); do pgrep -u "$user" >/dev/null || break; sleep 0.05; done
    userdel "$user" 2>/dev/null
  fi
  for f in /etc/passwd- /etc/group- /etc/shadow- /etc/gshadow- /etc/subuid- /etc/subgid- /etc/subuid /etc/subgid; do
    [ -f "$f" ] && sed -i "/^$user:/d" "$f"
  done
  [ "$(stat -c %a /dev/net/tun)" = "$tun_mode" ] || chmod "$tun_mode" /dev/net/tun
}

ok() { echo "ok    $*"; }
fail() { echo "FAIL  $*"; fails=$((fails + 1)); }
# check DESCRIPTION CMD...: ok if CMD succeeds, a failure otherwise.
check() {
  local what=$1; shift
  if "$@"; then ok "$what"; else fail "$what"; fi
}
# gone PID: the process has exited (a zombie not yet reaped counts).
gone() { [ -n "$1" ] && { ! kill -0 "$1" 2>/dev/null || [ "$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null)" = Z ]; }; }
# wait_for SECONDS CMD...: polls CMD until it succeeds or the deadline passes.
wait_for() {
  local deadline=$((SECONDS + $1)); shift
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.05
  done
}
# ns_of PID TYPE: the namespace of type TYPE (user, net, mnt) PID is in.
ns_of() { readlink "/proc/$1/ns/$2"; }
