#!/usr/bin/env bash
# Run pytest with the given interpreter; turn exit code 5 ("no tests collected") into a loud failure,
# so a suite that silently stops collecting can never pass as green.
py="$1"; shift
"$py" -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests for: $* — treating that as a failure" >&2
fi
exit "$rc"
