#!/bin/sh
# Writes a random marker to /state on the first start and prints it on
# every start, tries to execute a copy of busybox from /state, and counts
# the boots that the persisted log of ztms-init records.
marker=/state/marker
if [ -f "$marker" ]; then
    echo "marker found: $(cat "$marker")"
else
    prefix="ztms-$(echo storage | tr a-z A-Z)-MARKER"
    echo "$prefix-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')" > "$marker"
    sync
    echo "marker written: $(cat "$marker")"
fi
cp /bin/busybox /state/busybox-copy && chmod 755 /state/busybox-copy
if /state/busybox-copy true 2>/dev/null; then echo "exec on data: allowed"; else echo "exec on data: refused"; fi
rm -f /state/busybox-copy
echo "boots in the persisted log: $(grep -c 'stage 2 started' /logs/ztms.log)"
exec sleep 1000000
