#!/usr/bin/env bash
# Podman configured for this kind of host, and a Debian bookworm image that boots systemd:
# the "workstation" that molecule scenarios and the sandbox provision. Built once per recipe
# (hash of this file) and tagged :current, so reruns cost nothing.
set -euo pipefail
CACHE=${TOOLKIT_CACHE:-/var/cache/toolkit}
IMAGE=localhost/toolkit-systemd

# crun fails on this host's hybrid cgroups and podman cannot set rlimits unless defaults are cleared.
mkdir -p /etc/containers
conf=/etc/containers/containers.conf
want='[engine]
runtime = "runc"
[containers]
default_ulimits = []'
if [ "$(cat "$conf" 2>/dev/null)" != "$want" ]; then
  printf '%s\n' "$want" > "$conf"
fi

# Packages the roles would install anyway (apt in the container still works and reports "ok");
# baking them in keeps every converge from downloading them again.
PKGS=python3,python3-apt,python3-venv,python3-dev,systemd,systemd-sysv,dbus,sudo,ca-certificates,iproute2,curl,procps,g++,libnuma1,nftables,gnupg,openssh-server
recipe=$(printf '%s\n%s\n' "$(sha256sum "$0" | cut -c1-64)" "$PKGS" | sha256sum | cut -c1-12)

if podman image exists "$IMAGE:$recipe"; then
  podman tag "$IMAGE:$recipe" "$IMAGE:current"
  echo "test image $IMAGE:$recipe cached"
  exit 0
fi

root="$CACHE/rootfs-$recipe"
rm -rf "$root"
mkdir -p "$CACHE"
echo "building $IMAGE:$recipe with debootstrap (about a minute)"
debootstrap --variant=minbase --include="$PKGS" bookworm "$root" http://deb.debian.org/debian >"$CACHE/debootstrap.log" 2>&1 \
  || { tail -20 "$CACHE/debootstrap.log"; exit 1; }
# Trust the host's CA bundle so apt/pip inside reach the registries the host reaches.
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
cat > "$root/etc/apt/sources.list" <<'SRC'
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SRC
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
# Containers have no consoles or hardware: mask units that only wait or fail there.
for u in getty@tty1.service console-getty.service systemd-udevd.service systemd-udev-trigger.service \
         systemd-remount-fs.service sys-kernel-debug.mount sys-kernel-tracing.mount; do
  ln -sf /dev/null "$root/etc/systemd/system/$u"
done
# sshd is installed for the fleet tests (tests/fleet.py), which give each container its own host key
# and start it on 127.0.0.1 only; at boot nothing new listens (other tests assert loopback-only
# listeners), and no host key is shared by every container made from this image.
rm -f "$root"/etc/systemd/system/multi-user.target.wants/ssh.service "$root"/etc/systemd/system/sshd.service \
      "$root"/etc/systemd/system/sockets.target.wants/ssh.socket "$root"/etc/ssh/ssh_host_*
tar -C "$root" -c . | podman import --change 'CMD ["/sbin/init"]' --change 'STOPSIGNAL SIGRTMIN+3' - "$IMAGE:$recipe" >/dev/null
podman tag "$IMAGE:$recipe" "$IMAGE:current"
rm -rf "$root"
# Drop images of older recipes, except those containers still run from (no -f: that would remove them).
podman images --format '{{.Repository}}:{{.Tag}}' | grep "^$IMAGE:" | grep -v -e ":$recipe\$" -e ':current$' | xargs -r -n1 podman rmi >/dev/null 2>&1 || true
echo "built $IMAGE:$recipe"
