# Refresh apt's lists once; later setup scripts install what their part needs.
if command -v apt-get >/dev/null; then
    apt-get update -qq >/dev/null
fi
