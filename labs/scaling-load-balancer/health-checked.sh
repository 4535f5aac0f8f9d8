#!/bin/sh
# Check of the objective "health-checked", run inside lb: asks HAProxy itself (runtime API), not
# the config file, whether each server of backend "app" has a health check. Prints
# "N of M app servers health-checked" and exits 1 unless every one has.
echo "show stat" | socat stdio /run/haproxy/admin.sock | awk -F, '
    NR == 1 { for (i = 1; i <= NF; i++) if ($i == "check_status") column = i; next }
    $1 == "app" && $2 != "BACKEND" {
        servers++
        if ($column != "") checked++; else bare = bare " " $2
    }
    END {
        printf "%d of %d app servers health-checked\n", checked, servers
        if (bare != "") print "no health check on:" bare
        exit (servers > 0 && checked == servers) ? 0 : 1
    }'
