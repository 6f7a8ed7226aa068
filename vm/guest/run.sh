#!/bin/sh
# The guest's test run (sbxvm.service, under systemd, Delegate=yes). Prepares the virtio disks,
# runs the cgroup v2 subset of the suite, and leaves everything in the results share:
# guest.log (this output), junit.xml, v2-results.json, daemon logs, exit-code.
set -u
R=/mnt/sbxvm-results
cd "$SBXVM_SRC"
exec > "$R/guest.log" 2>&1
echo "guest: $(uname -r), $(nproc) CPUs, $(grep MemTotal /proc/meminfo), systemd $(systemctl --version | head -1)"
echo "runner cgroup: $(cat /proc/self/cgroup)"

# /dev/vda: an ext4 disk io.max is measured on; /dev/vdb: swap for memory.swap.max
mkfs.ext4 -q -F -L sbxio /dev/vda && mkdir -p /srv/sbxio && mount /dev/vda /srv/sbxio
mkswap -q /dev/vdb >/dev/null && swapon /dev/vdb
swapon --show

export SANDBOXD_TESTS_MUST_RUN=1 SANDBOXD_VM=1 SBXVM_RESULTS=$R SBXVM_IO_DEVICE=/dev/vda \
    SBXVM_IO_DIR=/srv/sbxio SANDBOXD_TEST_PREFIX=sbxg PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# the v1-only root tests of test_cgroups.py would skip here; the v2 ones and the pure ones run
deselect=""
for t in test_v1_limits_written_and_updated test_v1_io_rules_set_and_reset \
    test_v1_failed_create_leaves_nothing test_v1_membership_kill_remove \
    test_v1_memory_hog_is_oom_killed test_v1_fork_bomb_contained_at_pids_max \
    test_v1_cpu_stats_grow_and_throttle test_v1_freeze_thaw test_v1_list_and_remove_all \
    test_v2_missing_controller_is_named; do
    deselect="$deselect --deselect tests/test_cgroups.py::$t"
done
args="tests/vm/v2_limits.py tests/vm/v2_systemd.py tests/test_cgroups.py tests/test_limits.py
    tests/test_kernels.py::test_model_and_environment $deselect"
[ -s "$R/pytest-args" ] && args=$(cat "$R/pytest-args")  # make test-v2 PYTEST_ARGS=...
start=$(date +%s)
# shellcheck disable=SC2086
.venv/bin/python -m pytest -p no:cacheprovider -v --timeout 900 --junitxml="$R/junit.xml" \
    $args
code=$?
echo "pytest exit $code after $(( $(date +%s) - start )) s"
cp /tmp/sbxg*.log "$R/" 2>/dev/null
journalctl -b --no-pager -o short-monotonic > "$R/journal.log" 2>&1  # systemd's side of it
echo "$code" > "$R/exit-code"
