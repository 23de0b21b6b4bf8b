# Federation hub: PostgreSQL server binaries for the tests marked `postgres`. The suite starts its
# own throwaway server (initdb + pg_ctl on loopback, as the `postgres` user when run as root), so
# only the packages are needed here, not a running service.
if command -v apt-get >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi
