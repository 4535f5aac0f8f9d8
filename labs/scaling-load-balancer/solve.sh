#!/bin/sh
# Reference fix for "scaling-load-balancer", run inside the lb container as user haproxy.
# HAProxy learns to notice a dead replica (HTTP health checks) and to retry a request that hit
# one on another replica (redispatch). Safe to run more than once.
set -eu

cfg=/etc/haproxy/haproxy.cfg
tmp=$(mktemp /tmp/haproxy.cfg.XXXXXX)
trap 'rm -f "$tmp"' EXIT

# In `backend app`: drop earlier versions of these settings (a previous run, a learner's
# attempt), then put the fix right after the section header, before the server lines: a
# default-server line only applies to the servers below it, and it adds to the existing one.
awk '
    function is_section(line) {
        return line ~ /^[ \t]*(global|defaults|frontend|backend|listen|resolvers|peers|userlist|cache|program|http-errors|ring|mailers)([ \t]|$)/
    }
    is_section($0) { in_app = ($0 ~ /^[ \t]*backend[ \t]+app[ \t]*$/) }
    in_app && /^[ \t]*(option[ \t]+httpchk|http-check|option[ \t]+redispatch|retries|timeout[ \t]+check)([ \t]|$)/ { next }
    in_app && /^[ \t]*default-server[ \t]+check[ \t]+inter[ \t]/ { next }
    in_app && /^[ \t]*# Fix: / { next }
    { print }
    in_app && is_section($0) {
        print "    # Fix: check every replica twice a second; one failed check takes it out."
        print "    option httpchk GET /healthz"
        print "    timeout check 500ms"
        print "    default-server check inter 500ms fall 1 rise 2"
        print "    # Fix: a request whose replica does not answer is retried on another one."
        print "    retries 2"
        print "    option redispatch 1"
    }
' "$cfg" >"$tmp"

# Rewrite in place (not a rename): keeps the file owner and any bind mount intact.
cat "$tmp" >"$cfg"
haproxy-reload
