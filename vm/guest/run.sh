#!/bin/sh
echo "runner: $(cat /proc/self/cgroup) pid1=$(cat /proc/1/comm)"
cat /sys/fs/cgroup/cgroup.controllers /sys/fs/cgroup/system.slice/cgroup.subtree_control
getfattr -n trusted.delegate /sys/fs/cgroup/system.slice/sbxvm.service 2>&1
python3 -c 'import os; print(os.getxattr("/sys/fs/cgroup/system.slice/sbxvm.service", "trusted.delegate"))'
ls /lib/modules; modprobe veth && echo veth-ok
mount | grep -E " / | /tmp | /run "
ip link
systemd-run --wait -p Delegate=yes cat /proc/self/cgroup
