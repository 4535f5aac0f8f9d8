#!/bin/sh
# Setup of the lab "cache-aside", run inside db as user postgres once every node is healthy: the
# one item the traffic reads. The same table the app creates on its first connection (see
# labs/images/README.md); safe to run twice.
set -eu
psql -U app -d app -v ON_ERROR_STOP=1 -q <<'SQL'
CREATE TABLE IF NOT EXISTS items (
    key text PRIMARY KEY,
    value text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO items (key, value) VALUES ('greeting', 'Hello from PostgreSQL')
    ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now();
SQL
